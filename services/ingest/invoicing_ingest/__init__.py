"""Ingest: accepts invoices over gRPC and acknowledges once they are durable."""
