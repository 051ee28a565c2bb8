# Offsite copies written by the backup sidecar (BACKUP_S3_BUCKET). Private,
# versioned (a deleted backup stays recoverable for backup_noncurrent_days),
# encrypted with SSE-KMS, reachable over TLS only.

resource "aws_s3_bucket" "backups" {
  #checkov:skip=CKV_AWS_18:Server access logging needs a second bucket; CloudTrail data events are the option when object-level auditing is required.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; the bucket already is the offsite copy of backups that also exist on the server.
  #checkov:skip=CKV2_AWS_62:No consumer for event notifications: backup freshness is monitored by Prometheus on the server.
  bucket        = local.backup_bucket_name
  force_destroy = var.backup_bucket_force_destroy

  tags = merge(local.tags, { Name = local.backup_bucket_name })
}

resource "aws_s3_bucket_ownership_controls" "backups" {
  bucket = aws_s3_bucket.backups.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "backups" {
  bucket = aws_s3_bucket.backups.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "backups" {
  bucket = aws_s3_bucket.backups.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "backups" {
  bucket = aws_s3_bucket.backups.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
      # null: the AWS-managed aws/s3 key, usable by the instance role without
      # an explicit KMS grant.
      kms_master_key_id = var.backup_kms_key_arn
    }
    # One data key per bucket instead of one KMS call per object.
    bucket_key_enabled = true
  }
}

# One age-based rule for the whole bucket: dumps, base backups (<prefix>base/) and WAL (<prefix>wal/)
# alike. A base backup is uploaded before the WAL that follows it, so it always expires first: the
# bucket never drops WAL that a base backup still in it needs. A shorter rule for wal/ would break
# point-in-time restores from the older base backups (tests/backups.tftest.hcl).
resource "aws_s3_bucket_lifecycle_configuration" "backups" {
  bucket = aws_s3_bucket.backups.id

  rule {
    id     = "backups"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }

    dynamic "transition" {
      for_each = var.backup_ia_transition_days > 0 ? [var.backup_ia_transition_days] : []
      content {
        days          = transition.value
        storage_class = "STANDARD_IA"
      }
    }

    dynamic "expiration" {
      for_each = var.backup_expiration_days > 0 ? [var.backup_expiration_days] : []
      content {
        days = expiration.value
      }
    }

    noncurrent_version_expiration {
      noncurrent_days = var.backup_noncurrent_days
    }
  }

  # Lifecycle rules on a bucket require versioning to be settled first.
  depends_on = [aws_s3_bucket_versioning.backups]
}

resource "aws_s3_bucket_policy" "backups" {
  bucket = aws_s3_bucket.backups.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [local.backup_bucket_arn, "${local.backup_bucket_arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "DenyOutdatedTLS"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [local.backup_bucket_arn, "${local.backup_bucket_arn}/*"]
        Condition = { NumericLessThan = { "s3:TlsVersion" = "1.2" } }
      },
    ]
  })

  # A bucket policy is rejected while the public access block is being set.
  depends_on = [aws_s3_bucket_public_access_block.backups]
}

# Object Lock: every backup version is kept at least backup_object_lock_days,
# whoever asks to delete it (GOVERNANCE: only a principal with
# s3:BypassGovernanceRetention, which the instance role lacks; COMPLIANCE:
# nobody). Enabled on the versioned bucket by this resource, so an existing
# bucket is not replaced.
resource "aws_s3_bucket_object_lock_configuration" "backups" {
  bucket = aws_s3_bucket.backups.id

  rule {
    default_retention {
      mode = var.backup_object_lock_mode
      days = var.backup_object_lock_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.backups]
}
