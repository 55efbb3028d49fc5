"""invoicectl: command-line client."""
