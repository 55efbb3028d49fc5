"""Status: the invoice lifecycle, its history and the public status stream."""
