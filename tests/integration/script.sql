-- psql_script: run with `psql -X -v ON_ERROR_STOP=0 -A -f script.sql` against any node;
-- stdout must equal script.expected. Errors go to stderr and the script goes on.
SET timezone = 'UTC';
CREATE STREAM ps_clicks (user_id integer, page text, ms double precision, at timestamptz);
CREATE CONTINUOUS VIEW ps_pages AS
  SELECT page, count(*), sum(ms), min(ms), max(ms) FROM ps_clicks GROUP BY page;
CREATE VIEW ps_users WITH (action = materialize, sharding_policy = 'write_optimized') AS
  SELECT user_id, date_trunc('hour', at) AS hour, count(*) FROM ps_clicks
  GROUP BY user_id, hour;
INSERT INTO ps_clicks (user_id, page, ms, at) VALUES
  (1, '/home', 12.5, '2024-05-01 10:15:00+00'),
  (2, '/home', 7.5, '2024-05-01 10:45:00+00'),
  (1, '/cart', 100, '2024-05-01 11:05:00+00');
COPY ps_clicks (user_id, page, ms, at) FROM STDIN;
3	/home	\N	2024-05-01 10:59:59+00
3	/about	1.25	\N
\.
COPY ps_clicks (user_id, page, ms, at) FROM STDIN WITH (FORMAT csv);
4,"/a,b",2,2024-05-02 00:00:00+00
\.
SELECT * FROM ps_pages ORDER BY page;
SELECT page, count FROM ps_pages WHERE count > 1 ORDER BY page;
SELECT * FROM ps_users ORDER BY user_id, hour;
SELECT user_id, hour, count FROM ps_users ORDER BY hour DESC, user_id LIMIT 3 OFFSET 1;
SELECT sum(count), max(max), min(min) FROM ps_pages;
SELECT * FROM ps_nosuch;
INSERT INTO ps_clicks (user_id) VALUES ('x');
INSERT INTO ps_clicks (user_id, page) VALUES (5, '/home'), (5, NULL);
SELECT page, count, sum FROM ps_pages ORDER BY count DESC, page LIMIT 2;
SELECT page, count FROM ps_pages WHERE page IS NULL;
SHOW pipeline_cluster.insert_level;
SET pipeline_cluster.primary_only = on;
SHOW pipeline_cluster.primary_only;
RESET pipeline_cluster.primary_only;
SHOW pipeline_cluster.primary_only;
SELECT name, columns FROM pipeline_cluster.streams WHERE name = 'ps_clicks';
SELECT name, stream, sharding_policy FROM pipeline_cluster.views WHERE stream = 'ps_clicks' ORDER BY name;
DROP VIEW ps_users;
DROP CONTINUOUS VIEW ps_pages;
DROP STREAM ps_clicks;
SELECT * FROM ps_pages;
