CREATE TABLE users (id integer AUTO_INCREMENT PRIMARY KEY, email varchar(200) UNIQUE NOT NULL,
                    name varchar(200) NOT NULL, slug varchar(200) NOT NULL, bcrypt_hash varchar(200) NOT NULL,
                    argon2_hash varchar(200) NOT NULL);
CREATE TABLE articles (id integer AUTO_INCREMENT PRIMARY KEY, author integer NOT NULL REFERENCES users (id),
                       title varchar(200) NOT NULL, slug varchar(200) UNIQUE NOT NULL);
