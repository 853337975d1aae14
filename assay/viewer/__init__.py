"""`assay view`: a local web app over a workspace's runs, datasets, rejects, trajectories and
training runs, and the step feedback a person gives on reasoning traces.

Server-rendered (FastAPI + Jinja2, no JavaScript build): every query runs in DuckDB over the
run store and the Parquet shards; the browser only receives one page of rows.
"""
