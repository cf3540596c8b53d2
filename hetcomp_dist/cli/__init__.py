"""The ``hetcomp-dist`` command line (`main`) and the one the ``jobs/`` entrypoints share (`jobs`)."""
