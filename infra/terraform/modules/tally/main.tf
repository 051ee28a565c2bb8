# Shared lookups and derived values. Resources live in the file of their
# concern: network, security, compute, storage, dns, backup_bucket, iam,
# monitoring.

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_availability_zones" "available" {
  # RDS and the swarm workers need the other zones of the region too.
  count = var.availability_zone == null || var.database == "rds" ? 1 : 0
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # The instance and its data volume must share one zone; the first zone of
  # the region is stable across plans, so the volume is never re-created.
  availability_zone = var.availability_zone != null ? var.availability_zone : data.aws_availability_zones.available[0].names[0]

  tags = merge(var.tags, {
    Project   = "tally"
    Name      = var.name
    ManagedBy = "terraform"
  })

  ssm_parameter_prefix = coalesce(var.ssm_parameter_prefix, "/${var.name}")
  secret_names         = ["postgres_password", "secret_key", "grafana_admin_password"]

  backup_bucket_name = coalesce(var.backup_bucket_name, "${var.name}-backups-${local.account_id}-${local.region}")
  # Built from the name rather than read from the bucket so the policies are
  # known at plan time (and reviewable in the plan).
  backup_bucket_arn = "arn:${local.partition}:s3:::${local.backup_bucket_name}"

  public_host = var.domain != "" ? var.domain : aws_eip.this.public_ip
  url         = "https://${local.public_host}"

  create_dns_record = var.route53_zone_id != null && var.domain != ""

  # database = "rds" runs the stack on Docker Swarm (one node when
  # app_hosts = 1): the rendered stack is what knows a managed server.
  rds     = var.database == "rds"
  swarm   = local.rds
  workers = var.app_hosts - 1
  # The server's zone first, then the region's others (at most three).
  region_zones = local.swarm ? distinct(concat([local.availability_zone], data.aws_availability_zones.available[0].names)) : [local.availability_zone]
  zones        = slice(local.region_zones, 0, min(3, length(local.region_zones)))
}
