"""QueryService: search, compare, histories, whole-series reads and live tails."""
