-- The catalog of remediation workflows that the services read.
CREATE TABLE remediation_workflow_catalog (
    workflow_id   VARCHAR(64)  PRIMARY KEY,
    workflow_name VARCHAR(255) NOT NULL,
    version       VARCHAR(32)  NOT NULL DEFAULT '1.0.0',
    status        VARCHAR(16)  NOT NULL DEFAULT 'draft',
    labels        TEXT         NOT NULL DEFAULT '{}',
    content       TEXT,
    created_at    TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX remediation_workflow_catalog_status_idx ON remediation_workflow_catalog (status);
