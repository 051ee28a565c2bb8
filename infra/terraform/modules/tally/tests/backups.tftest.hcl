# The offsite backup bucket and the instance role that may use it.

mock_provider "aws" {
  source = "./tests/mocks"
}

mock_provider "aws" {
  alias  = "us_east_1"
  source = "./tests/mocks"
}

variables {
  repo_url = "https://github.com/example/tally.git"
  repo_ref = "v1.0.0"
}

run "bucket_is_private_versioned_encrypted" {
  command = plan

  assert {
    condition = toset(flatten([
      for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : s.Resource if startswith(join(",", flatten([s.Action])), "s3:")
    ])) == toset(["arn:aws:s3:::tally-backups-123456789012-eu-west-1", "arn:aws:s3:::tally-backups-123456789012-eu-west-1/*"])
    error_message = "S3 permissions must name only the backup bucket and its objects."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.instance.policy).Statement :
      !contains(flatten([s.Resource]), "*") && !anytrue([for a in flatten([s.Action]) : endswith(a, ":*") || a == "*"])
    ])
    error_message = "No wildcard action or resource in the instance policy."
  }

  assert {
    condition = !anytrue([
      for s in jsondecode(aws_iam_role_policy.instance.policy).Statement :
      s.Effect == "Allow" && anytrue([for a in flatten([s.Action]) : startswith(a, "s3:Delete") || startswith(a, "s3:PutObjectRetention") || startswith(a, "s3:BypassGovernance") || startswith(a, "ssm:Delete")])
    ])
    error_message = "The server must not be able to delete backups (or unlock them) or delete its secrets."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_iam_role_policy.instance.policy).Statement :
      s.Effect == "Deny" && contains(flatten([s.Action]), "ssm:PutParameter") &&
      s.Resource == "arn:aws:ssm:eu-west-1:123456789012:parameter/tally/*" &&
      try(s.Condition.StringEquals["ssm:Overwrite"], []) == ["true"]
    ])
    error_message = "The stack secrets are written once: the instance role may create but never overwrite an SSM parameter."
  }

  assert {
    condition = (
      one(aws_s3_bucket_object_lock_configuration.backups.rule[0].default_retention).mode == "GOVERNANCE" &&
      one(aws_s3_bucket_object_lock_configuration.backups.rule[0].default_retention).days == 30
    )
    error_message = "Backups must be under S3 Object Lock (GOVERNANCE, 30 days by default)."
  }

  assert {
    condition = !anytrue([
      for s in jsondecode(aws_iam_role_policy.instance.policy).Statement :
      contains(flatten([s.Action]), "s3:DeleteObjectVersion") || contains(flatten([s.Action]), "s3:PutBucketPolicy")
    ])
    error_message = "The server must not be able to erase backup history or change the bucket policy."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_iam_role_policy.instance.policy).Statement :
      s.Resource == "arn:aws:ssm:eu-west-1:123456789012:parameter/tally/*" && contains(s.Action, "ssm:GetParameter")
    ])
    error_message = "The instance must read its secrets from SSM under /tally/ only."
  }

  assert {
    condition     = jsondecode(aws_iam_role.instance.assume_role_policy).Statement[0].Principal.Service == "ec2.amazonaws.com"
    error_message = "Only EC2 may assume the instance role."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_s3_bucket_policy.backups.policy).Statement :
      s.Effect == "Deny" && s.Principal == "*" && s.Action == "s3:*" &&
      try(s.Condition.Bool["aws:SecureTransport"], "") == "false" &&
      toset(s.Resource) == toset(["arn:aws:s3:::tally-backups-123456789012-eu-west-1", "arn:aws:s3:::tally-backups-123456789012-eu-west-1/*"])
    ])
    error_message = "The bucket policy must deny every request that is not over TLS, on the bucket and its objects."
  }

  assert {
    condition     = alltrue([for s in jsondecode(aws_s3_bucket_policy.backups.policy).Statement : s.Effect == "Deny"])
    error_message = "The bucket policy may only deny: access is granted by the instance role."
  }

  assert {
    condition     = aws_s3_bucket.backups.bucket == "tally-backups-123456789012-eu-west-1"
    error_message = "Default bucket name must be <name>-backups-<account>-<region>."
  }

  assert {
    condition     = aws_s3_bucket.backups.force_destroy == false
    error_message = "terraform destroy must not silently delete backups."
  }

  assert {
    condition = (
      aws_s3_bucket_public_access_block.backups.block_public_acls &&
      aws_s3_bucket_public_access_block.backups.block_public_policy &&
      aws_s3_bucket_public_access_block.backups.ignore_public_acls &&
      aws_s3_bucket_public_access_block.backups.restrict_public_buckets
    )
    error_message = "All four public access blocks must be on."
  }

  assert {
    condition     = aws_s3_bucket_ownership_controls.backups.rule[0].object_ownership == "BucketOwnerEnforced"
    error_message = "ACLs must be disabled (BucketOwnerEnforced)."
  }

  assert {
    condition     = aws_s3_bucket_versioning.backups.versioning_configuration[0].status == "Enabled"
    error_message = "Versioning must be enabled."
  }

  assert {
    condition     = one([for r in aws_s3_bucket_server_side_encryption_configuration.backups.rule : one(r.apply_server_side_encryption_by_default).sse_algorithm]) == "aws:kms"
    error_message = "Default encryption must be SSE-KMS."
  }

  assert {
    condition = alltrue([
      for r in aws_s3_bucket_lifecycle_configuration.backups.rule :
      r.status == "Enabled" &&
      r.abort_incomplete_multipart_upload[0].days_after_initiation == 7 &&
      r.noncurrent_version_expiration[0].noncurrent_days == 30 &&
      r.expiration[0].days == 400 &&
      one(r.transition).storage_class == "STANDARD_IA" && one(r.transition).days == 30
    ])
    error_message = "Lifecycle must abort stale uploads, expire noncurrent versions after 30 days, current ones after 400, and move to Standard-IA."
  }

  assert {
    condition = length(aws_s3_bucket_lifecycle_configuration.backups.rule) == 1 && alltrue([
      for r in aws_s3_bucket_lifecycle_configuration.backups.rule : length(r.filter) == 1 && length(r.filter[0].and) == 0
    ])
    error_message = "One lifecycle rule over the whole bucket: WAL (wal/) must never expire before the base backups (base/) that need it."
  }
}



run "customer_keys_and_no_expiry" {
  command = plan

  variables {
    backup_object_lock_mode   = "COMPLIANCE"
    backup_object_lock_days   = 90
    backup_kms_key_arn        = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    ebs_kms_key_arn           = "arn:aws:kms:eu-west-1:123456789012:key/66666666-7777-8888-9999-000000000000"
    backup_expiration_days    = 0
    backup_ia_transition_days = 0
  }

  assert {
    condition     = alltrue([for r in aws_s3_bucket_lifecycle_configuration.backups.rule : length(r.expiration) == 0 && length(r.transition) == 0])
    error_message = "0 must disable expiry and the IA transition."
  }

  assert {
    condition     = one(aws_s3_bucket_object_lock_configuration.backups.rule[0].default_retention).mode == "COMPLIANCE" && one(aws_s3_bucket_object_lock_configuration.backups.rule[0].default_retention).days == 90
    error_message = "The Object Lock mode and days must follow the variables."
  }

  assert {
    condition     = one([for r in aws_s3_bucket_server_side_encryption_configuration.backups.rule : one(r.apply_server_side_encryption_by_default).kms_master_key_id]) == var.backup_kms_key_arn
    error_message = "The bucket must use the given KMS key."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_iam_role_policy.instance.policy).Statement :
      s.Resource == var.backup_kms_key_arn && contains(s.Action, "kms:GenerateDataKey")
    ])
    error_message = "The instance role must be allowed to use the bucket's KMS key."
  }

  assert {
    condition     = aws_ebs_volume.data.kms_key_id == var.ebs_kms_key_arn && aws_instance.this.root_block_device[0].kms_key_id == var.ebs_kms_key_arn
    error_message = "Both volumes must use the given EBS KMS key."
  }
}

