# database = "rds": Amazon RDS for PostgreSQL 15 instead of the postgres
# container. Private subnets only, reachable on 5432 from the swarm's hosts
# only, TLS required (rds.force_ssl), encrypted with a KMS key, Multi-AZ and
# automated backups (point-in-time recovery) by default. The master user is
# the stack's bootstrap user `tally`: its password is generated and kept by
# RDS in Secrets Manager (never in Terraform state); the manager's bootstrap
# reads it into the Swarm secret postgres_password, and `migrate` creates the
# app's, the backup's and the exporter's roles with it.

locals {
  db_kms_key_arn = local.rds ? coalesce(var.db_kms_key_arn, try(aws_kms_key.db[0].arn, null)) : null
  # RDS's certificate authority (the default for new instances); the hosts
  # fetch its bundle from AWS's trust store at boot (docs/deploy-aws.md).
  db_ca_identifier = "rds-ca-rsa2048-g1"
}

resource "aws_kms_key" "db" {
  count = local.rds && var.db_kms_key_arn == null ? 1 : 0

  description             = "${var.name} RDS storage, snapshots and master password"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      # The account's IAM policies decide (the default key policy, written
      # out): RDS and Secrets Manager use the key on behalf of principals the
      # instance role grants it to (iam.tf).
      Sid       = "AccountAdministers"
      Effect    = "Allow"
      Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })

  tags = merge(local.tags, { Name = "${var.name}-db" })
}

resource "aws_db_subnet_group" "this" {
  count = local.rds ? 1 : 0

  name_prefix = "${var.name}-"
  description = "Tally PostgreSQL: private subnets only"
  subnet_ids  = aws_subnet.private[*].id

  tags = merge(local.tags, { Name = "${var.name}-db" })
}

resource "aws_db_parameter_group" "this" {
  count = local.rds ? 1 : 0

  name_prefix = "${var.name}-pg15-"
  family      = "postgres15"
  description = "Tally PostgreSQL 15: TLS required, slow statements logged"

  # Plain-text connections are refused: every client uses
  # sslmode=verify-full against the RDS CA (the db_ca secret).
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  # The same threshold as the container's POSTGRES_LOG_MIN_DURATION_MS.
  parameter {
    name  = "log_min_duration_statement"
    value = "500"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  tags = merge(local.tags, { Name = "${var.name}-db" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "db" {
  count = local.rds ? 1 : 0

  name_prefix = "${var.name}-db-"
  description = "Tally PostgreSQL: 5432 from the swarm hosts only"
  vpc_id      = local.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-db" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "db_from_hosts" {
  count = local.rds ? 1 : 0

  security_group_id            = aws_security_group.db[0].id
  description                  = "PostgreSQL from the swarm hosts"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.node[0].id

  tags = local.tags
}

resource "aws_db_instance" "this" {
  count = local.rds ? 1 : 0

  #checkov:skip=CKV_AWS_118:Enhanced monitoring duplicates the stack's postgres-exporter and Prometheus, and needs a role and CloudWatch costs.
  identifier_prefix = "${var.name}-"
  engine            = "postgres"
  engine_version    = "15"
  instance_class    = var.db_instance_class

  db_name  = "tally"
  username = "tally"
  # RDS generates the password and keeps it in Secrets Manager, encrypted
  # with the database's key; Terraform never sees it.
  manage_master_user_password   = true
  master_user_secret_kms_key_id = local.db_kms_key_arn

  allocated_storage     = var.db_allocated_storage
  max_allocated_storage = var.db_max_allocated_storage
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = local.db_kms_key_arn

  multi_az               = var.db_multi_az
  db_subnet_group_name   = aws_db_subnet_group.this[0].name
  vpc_security_group_ids = [aws_security_group.db[0].id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.this[0].name
  ca_cert_identifier     = local.db_ca_identifier

  backup_retention_period = var.db_backup_retention_days
  backup_window           = "02:30-03:00"
  maintenance_window      = "sun:04:00-sun:05:00"
  copy_tags_to_snapshot   = true
  deletion_protection     = true
  skip_final_snapshot     = false
  # A fixed name: a second destroy attempt must not silently skip it.
  final_snapshot_identifier = "${var.name}-final"

  auto_minor_version_upgrade          = true
  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  # 7 days of query-level load history are free of charge.
  performance_insights_enabled          = true
  performance_insights_retention_period = 7
  performance_insights_kms_key_id       = local.db_kms_key_arn

  tags = merge(local.tags, { Name = "${var.name}-db" })
}
