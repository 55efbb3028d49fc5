"""`invoicectl bench`: load generator, pipeline runner, same-run baselines and report."""
