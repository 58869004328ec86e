"""`python -m retention_pipeline.cli`: the console script, with its one-line errors."""

from retention_pipeline.entry import main

main()
