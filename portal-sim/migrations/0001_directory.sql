-- The portal's directory and its change log. One text for SQLite and PostgreSQL: only types and
-- clauses both accept (BIGINT, TEXT, ON CONFLICT, RETURNING).

CREATE TABLE clients (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    -- SHA-1 of the token, hex: the token itself is never stored.
    token_sha1 TEXT NOT NULL UNIQUE,
    ipv4 TEXT NOT NULL UNIQUE,
    ipv6 TEXT NOT NULL UNIQUE
);

CREATE TABLE gateways (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    token_sha1 TEXT NOT NULL UNIQUE,
    site TEXT NOT NULL
);

CREATE TABLE resources (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    site TEXT NOT NULL,
    -- 'host' or 'cidr'
    kind TEXT NOT NULL,
    address TEXT NOT NULL
);

CREATE TABLE policies (
    client_id BIGINT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    resource_id BIGINT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    -- NULL: the portal's default authorization length.
    duration_secs BIGINT,
    PRIMARY KEY (client_id, resource_id)
);

CREATE TABLE relays (
    id BIGINT PRIMARY KEY,
    address TEXT NOT NULL
);

-- The node that last joined with each public key: the key stays its own while it is offline.
CREATE TABLE key_owners (
    public_key TEXT PRIMARY KEY,
    -- 'client:N' or 'gateway:N'
    node TEXT NOT NULL
);

-- Every change, in the order all instances apply them. Ids are taken as MAX + 1 inside the
-- committing transaction, so they become visible in order (a sequence could show id 6 before 5).
CREATE TABLE changes (
    id BIGINT PRIMARY KEY,
    change TEXT NOT NULL
);
