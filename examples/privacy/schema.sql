CREATE TABLE customers (id serial PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL,
                        email text UNIQUE NOT NULL, phone text NOT NULL, card text NOT NULL, iban text NOT NULL,
                        ssn text NOT NULL, password_hash text NOT NULL);
