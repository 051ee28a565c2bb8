# The instance role may touch exactly: the backup bucket (read and write, no
# delete at all: old backups go by lifecycle rules, and Object Lock keeps them
# even from the bucket owner's mistakes), its own SSM parameters (read, and
# create once at first boot: never overwrite), and, when enabled, SSM Session
# Manager. Only the host can use the role (IMDS hop limit 1, compute.tf).

locals {
  # The server's and the swarm workers' roles (swarm.tf).
  ec2_assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role" "instance" {
  name_prefix        = "${var.name}-server-"
  description        = "Tally server instance role"
  assume_role_policy = local.ec2_assume_role_policy

  tags = local.tags
}

locals {
  ssm_parameter_arn = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter${local.ssm_parameter_prefix}/*"

  instance_policy_statements = concat(
    [
      {
        Sid      = "BackupBucketList"
        Effect   = "Allow"
        Action   = ["s3:ListBucket", "s3:GetBucketLocation"]
        Resource = local.backup_bucket_arn
      },
      {
        Sid    = "BackupObjects"
        Effect = "Allow"
        Action = [
          "s3:GetObject",
          "s3:PutObject",
          "s3:AbortMultipartUpload",
          "s3:ListMultipartUploadParts",
        ]
        Resource = "${local.backup_bucket_arn}/*"
      },
      {
        # PutParameter lets the first boot store the secrets it generates.
        Sid      = "StackSecrets"
        Effect   = "Allow"
        Action   = ["ssm:GetParameter", "ssm:GetParameters", "ssm:PutParameter"]
        Resource = local.ssm_parameter_arn
      },
      {
        # ... but only a parameter that does not exist yet: a compromised host
        # cannot replace the stack's secrets.
        Sid       = "StackSecretsWrittenOnce"
        Effect    = "Deny"
        Action    = ["ssm:PutParameter"]
        Resource  = local.ssm_parameter_arn
        Condition = { StringEquals = { "ssm:Overwrite" = ["true"] } }
      },
    ],
    var.backup_kms_key_arn == null ? [] : [{
      Sid      = "BackupKmsKey"
      Effect   = "Allow"
      Action   = ["kms:GenerateDataKey", "kms:Decrypt"]
      Resource = var.backup_kms_key_arn
    }],
    # Swarm manager (database = "rds"): publishes the workers' join token,
    # replacing it when a new manager starts a new swarm, and reads the RDS
    # master password, decrypted with the database's key through Secrets
    # Manager only.
    [for statement in [
      {
        Sid      = "SwarmJoinToken"
        Effect   = "Allow"
        Action   = ["ssm:PutParameter", "ssm:GetParameter"]
        Resource = local.swarm_join_parameter_arn
      },
      {
        Sid      = "DatabaseMasterPassword"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = try(aws_db_instance.this[0].master_user_secret[0].secret_arn, "")
      },
      {
        Sid       = "DatabaseMasterPasswordKey"
        Effect    = "Allow"
        Action    = ["kms:Decrypt"]
        Resource  = local.db_kms_key_arn
        Condition = { StringEquals = { "kms:ViaService" = "secretsmanager.${local.region}.amazonaws.com" } }
      },
    ] : statement if local.swarm],
  )
}

resource "aws_iam_role_policy" "instance" {
  name   = "tally-server"
  role   = aws_iam_role.instance.id
  policy = jsonencode({ Version = "2012-10-17", Statement = local.instance_policy_statements })
}

resource "aws_iam_role_policy_attachment" "ssm_core" {
  count = var.enable_ssm ? 1 : 0

  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "instance" {
  name_prefix = "${var.name}-server-"
  role        = aws_iam_role.instance.name
  tags        = local.tags
}

# Data Lifecycle Manager takes the data volume snapshots.
resource "aws_iam_role" "dlm" {
  count = var.data_volume_snapshots ? 1 : 0

  name_prefix = "${var.name}-dlm-"
  description = "Tally data volume snapshots (DLM)"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "dlm.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })

  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "dlm" {
  count = var.data_volume_snapshots ? 1 : 0

  role       = aws_iam_role.dlm[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"
}
