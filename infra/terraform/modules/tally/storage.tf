# The data volume holds Docker's data root (/srv/tally-data/docker): every
# named volume of the stack (PostgreSQL, Prometheus, Grafana, local backups,
# ACME certificates) and the images. It is independent of the instance so a
# replaced instance re-attaches the same data.

resource "aws_ebs_volume" "data" {
  #checkov:skip=CKV_AWS_189:Encrypted with the account's EBS key by default; a customer-managed key is an option (ebs_kms_key_arn), not a requirement for a single-server site.
  availability_zone = local.availability_zone
  size              = var.data_volume_size
  type              = "gp3"
  encrypted         = true
  kms_key_id        = var.ebs_kms_key_arn
  # Even a deliberate delete leaves a last snapshot behind.
  final_snapshot = true

  tags = merge(local.tags, {
    Name          = "${var.name}-data"
    TallySnapshot = var.name
  })

  lifecycle {
    # The database lives here. `terraform destroy` stops on this volume on
    # purpose; docs/deploy-aws.md explains how to keep or delete it.
    prevent_destroy = true
  }
}

resource "aws_volume_attachment" "data" {
  # Seen as /dev/xvdf on Xen instances and as an NVMe device whose serial is
  # the volume id on Nitro instances; the bootstrap looks for both.
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.data.id
  instance_id = aws_instance.this.id

  # Stop the instance before detaching so PostgreSQL shuts down cleanly and
  # the filesystem is unmounted when the instance is replaced.
  stop_instance_before_detaching = true
}

resource "aws_dlm_lifecycle_policy" "data" {
  count = var.data_volume_snapshots ? 1 : 0

  description        = "${var.name} data volume daily snapshots"
  execution_role_arn = aws_iam_role.dlm[0].arn
  state              = "ENABLED"

  policy_details {
    resource_types = ["VOLUME"]
    target_tags = {
      TallySnapshot = var.name
    }

    schedule {
      name      = "daily"
      copy_tags = true

      create_rule {
        interval      = 24
        interval_unit = "HOURS"
        times         = ["03:30"]
      }

      retain_rule {
        count = var.snapshot_retention_count
      }
    }
  }

  tags = local.tags
}
