"""Requests this service makes to addresses chosen by tenants: image fetches and callbacks."""
