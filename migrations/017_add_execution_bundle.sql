-- Workflows ship as an execution bundle (an OCI reference).
ALTER TABLE remediation_workflow_catalog ADD COLUMN execution_bundle VARCHAR(512);
