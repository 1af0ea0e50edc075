"""Standard Webhooks in and out.

Out: every decision becomes a signed event for the tenant's receiver, delivered with retries on
a schedule kept in Postgres. In: a tenant with an inbound secret must sign its submissions.
This room knows nothing of decisions or submissions beyond the plain data it is handed.
"""
