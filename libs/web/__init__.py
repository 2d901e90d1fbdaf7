"""HTTP plumbing shared by the admin API and the public edge: problems, request context,
security headers."""
