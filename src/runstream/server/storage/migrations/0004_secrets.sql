-- Keys every server process of one installation shares, made once at random by the first
-- server that needs one (page tokens are signed with 'page-tokens').
CREATE TABLE server_secrets (
    name   text PRIMARY KEY,
    secret bytea NOT NULL
);
