CREATE TABLE products (sku text PRIMARY KEY, price integer NOT NULL, sold integer NOT NULL DEFAULT 0);
CREATE TABLE orders (id text PRIMARY KEY, sku text NOT NULL REFERENCES products, qty integer NOT NULL, total integer NOT NULL);
INSERT INTO products (sku, price) VALUES ('apple', 4), ('pear', 5);
