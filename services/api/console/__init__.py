"""The admin console: server-rendered pages under /console (Jinja2 + htmx + SSE).

It calls the same domain code as the REST routes (repositories, route functions called as
plain functions), never the REST API over HTTP.
"""
