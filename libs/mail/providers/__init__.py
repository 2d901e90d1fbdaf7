"""Mail providers: SendGrid (and the local sink, which speaks its API) and SMTP."""
