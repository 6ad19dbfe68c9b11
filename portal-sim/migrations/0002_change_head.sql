-- The newest change id, in one row. A commit takes the next id by updating this row, which holds
-- the row's lock until it ends: a concurrent commit waits, then reads the new value and goes on.
-- Taking MAX(id) + 1 from `changes` instead let two commits pick the same id, and the loser of a
-- stream of such races could lose every retry.
CREATE TABLE change_head (
    singleton BIGINT PRIMARY KEY CHECK (singleton = 1),
    last BIGINT NOT NULL
);

INSERT INTO change_head (singleton, last) SELECT 1, COALESCE(MAX(id), 0) FROM changes;
