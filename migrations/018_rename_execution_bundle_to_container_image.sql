-- The execution bundle is a container image: rename it and add its digest.
-- Services still on the 017 code keep working through the compat_017 shim.
-- compat: rename remediation_workflow_catalog.execution_bundle -> container_image window=14d
ALTER TABLE remediation_workflow_catalog RENAME COLUMN execution_bundle TO container_image;
ALTER TABLE remediation_workflow_catalog ADD COLUMN container_digest VARCHAR(80);
