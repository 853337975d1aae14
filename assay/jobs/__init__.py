"""End-to-end jobs: a curation run, training and evaluation chained into one report.

A recipe with a `job:` key (`job: intern`) runs `assay.jobs.<job>.run_job(config, ...)`
instead of a stage list; `assay run recipes/intern.yaml --profile full` picks a profile.
"""
