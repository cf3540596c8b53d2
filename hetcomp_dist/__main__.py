from hetcomp_dist.cli import main

raise SystemExit(main())
