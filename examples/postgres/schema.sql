-- Schema of the example shop (examples/postgres/app.py, node_app.js, tokio_app.rs).
CREATE TABLE items (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    price numeric(10, 2) NOT NULL,
    stock integer NOT NULL DEFAULT 10 CHECK (stock >= 0),
    weight double precision NOT NULL DEFAULT 1.5,
    active boolean NOT NULL DEFAULT true,
    tags text[] NOT NULL DEFAULT '{}',
    meta jsonb NOT NULL DEFAULT '{}',
    uid uuid NOT NULL DEFAULT md5(random()::text)::uuid,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    item_id bigint NOT NULL REFERENCES items (id),
    qty integer NOT NULL,
    at timestamp NOT NULL DEFAULT now()::timestamp
);
