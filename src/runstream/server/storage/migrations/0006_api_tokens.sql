-- API tokens: the server keeps a token's public id and the SHA-256 of its secret part, never
-- the token itself. A token allows its scopes; `experiments`, when set, limits its read and
-- write scopes to experiments whose names match that glob pattern.
CREATE TABLE api_tokens (
    token_id    text PRIMARY KEY,
    name        text NOT NULL,
    secret_hash bytea NOT NULL,
    scopes      text[] NOT NULL,
    experiments text,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
-- One live token per name, so `tokens revoke NAME` means one token.
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;
