-- The home screen's history: the host's own figures and each agent's memory and disk, one row
-- per sample ([overview] sample_secs), kept 7 days (older rows are pruned at each sample).

CREATE TABLE host_samples (
    at                    INTEGER PRIMARY KEY,  -- unix ms
    cpu_percent           REAL,
    memory_used_bytes     INTEGER,
    memory_total_bytes    INTEGER,
    data_disk_used_bytes  INTEGER,
    data_disk_total_bytes INTEGER,
    pool_used_bytes       INTEGER,
    pool_total_bytes      INTEGER
);

CREATE TABLE agent_samples (
    agent_id          TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    at                INTEGER NOT NULL,
    memory_used_bytes INTEGER,
    disk_used_bytes   INTEGER,
    disk_quota_bytes  INTEGER,
    PRIMARY KEY (agent_id, at)
);
-- Pruning by age and reading a period across agents.
CREATE INDEX agent_samples_at ON agent_samples(at);
