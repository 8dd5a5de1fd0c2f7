"""One function per stage of the night, used by both the command line and the DAG."""
