from hetcomp_dist.cli.main import main

raise SystemExit(main())
