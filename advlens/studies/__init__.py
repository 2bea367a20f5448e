"""Studies: declarative pipelines from model and data to results tables, figures and reports."""
