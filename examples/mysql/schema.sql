-- The example shop's tables and data. Used by tests/mysql.rs (inside a fresh database per test) and by hand:
--   mariadb -h 127.0.0.1 -u root -e 'CREATE DATABASE shop' && mariadb -h 127.0.0.1 -u root shop < schema.sql
CREATE TABLE items (
  id INT PRIMARY KEY,
  name VARCHAR(40) NOT NULL,
  price DECIMAL(8, 2) NOT NULL,
  stock BIGINT UNSIGNED NOT NULL,
  weight DOUBLE NULL,
  added DATE NULL,
  updated DATETIME(6) NULL,
  notes TEXT NULL,
  tag BLOB NULL
);
INSERT INTO items VALUES
  (1, 'pen', 1.25, 100, 0.02, '2024-01-02', '2024-01-02 03:04:05.123456', NULL, x'00ff'),
  (2, 'book', 12.75, 7, 0.5, '2023-12-31', '2023-12-31 23:59:59', 'hardcover', NULL),
  (3, 'mug', 4.10, 18446744073709551615, NULL, '2024-02-29', '2024-02-29 12:00:00.5', 'ceramic', 'abc');
CREATE TABLE orders (
  id INT PRIMARY KEY AUTO_INCREMENT,
  item_id INT NOT NULL,
  qty INT NOT NULL
);
DELIMITER //
CREATE PROCEDURE order_report()
BEGIN
  SELECT COUNT(*) AS orders FROM orders;
  SELECT name FROM items ORDER BY id;
END//
DELIMITER ;
