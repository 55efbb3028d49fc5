"""Validate: checks each received invoice and extracts its business summary."""
