"""One night, one function per stage, used by both the command line and the DAG.

``context`` holds the :class:`~pipeline.context.Night` every stage takes; ``night`` the stage
functions; ``record`` the night's record under ``var/nights/``; ``reruns`` what a rerun of a
published night may do; ``airflow_local`` the DAGs' pools and the demo's local Airflow.
"""
