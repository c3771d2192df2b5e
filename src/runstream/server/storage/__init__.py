"""PostgreSQL: every SQL statement (store), migrations, the chunk format, downsampled histories
and the filter language of search."""
