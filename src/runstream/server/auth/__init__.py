"""Who is calling and what they may do: API tokens (credentials.py), the scope every RPC needs
(policy.py), and the check every call passes before its handler runs (guard.py)."""
