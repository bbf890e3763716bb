CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL, name text NOT NULL, slug text NOT NULL,
                    bcrypt_hash text NOT NULL, argon2_hash text NOT NULL);
CREATE TABLE articles (id serial PRIMARY KEY, author integer NOT NULL REFERENCES users, title text NOT NULL,
                       slug text UNIQUE NOT NULL);
