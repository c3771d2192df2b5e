"""The HTTP side of the server port beside /metrics: the JSON API (api.py) every unary RPC is
reachable through, and the login that gives a browser the same token as a cookie (login.py)."""
