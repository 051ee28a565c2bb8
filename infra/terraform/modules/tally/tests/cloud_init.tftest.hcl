# The rendered cloud-init: valid YAML, runs the bootstrap that mounts the data
# volume, fetches the pinned ref, writes .env and starts Compose, and carries
# no secret (secrets are read from SSM Parameter Store at boot).

mock_provider "aws" {
  source = "./tests/mocks"
}

mock_provider "aws" {
  alias  = "us_east_1"
  source = "./tests/mocks"
}

variables {
  repo_url   = "https://github.com/example/tally.git"
  repo_ref   = "v1.2.3"
  domain     = "tally.example.com"
  acme_email = "ops@example.com"
  user_name  = "Example Ops"
  user_url   = "https://example.com/ops"
  extra_env = {
    COMPOSE_PROFILES = "monitoring"
  }
}

run "cloud_init_content" {
  command = plan

  assert {
    condition     = startswith(output.user_data, "#cloud-config\n")
    error_message = "User data must be a cloud-config document."
  }

  assert {
    condition     = yamldecode(output.user_data).runcmd == [["/usr/local/sbin/tally-bootstrap"]]
    error_message = "cloud-init must run the bootstrap and nothing else."
  }

  assert {
    condition = one([
      for f in yamldecode(output.user_data).write_files : f.content
      if f.path == "/usr/local/sbin/tally-bootstrap" && f.permissions == "0755"
    ]) == file("templates/bootstrap.sh")
    error_message = "The bootstrap script must be embedded byte for byte and executable."
  }

  assert {
    condition     = can(regex("(?m)^\\s+docker compose up -d", output.user_data))
    error_message = "The bootstrap must start the stack with docker compose up -d."
  }

  assert {
    condition = one([
      for f in yamldecode(output.user_data).write_files : f.content
      if f.path == "/etc/tally/stack.env"
      ]) == join("\n", [
      "ACME_EMAIL='ops@example.com'",
      "AWS_DEFAULT_REGION='eu-west-1'",
      "BACKUP_S3_BUCKET=''",
      "BACKUP_S3_REGION='eu-west-1'",
      "COMPOSE_PROFILES='monitoring'",
      "DOMAIN='tally.example.com'",
      "USER_NAME='Example Ops'",
      "USER_URL='https://example.com/ops'",
      "",
    ])
    error_message = "stack.env (the future .env) must hold exactly the stack's variables."
  }

  assert {
    condition = alltrue([
      for line in [
        "TALLY_REPO_URL='https://github.com/example/tally.git'",
        "TALLY_REPO_REF='v1.2.3'",
        "TALLY_DATA_VOLUME_ID='vol-0123456789abcdef0'",
        "TALLY_SSM_PREFIX='/tally'",
        "TALLY_SECRET_NAMES='postgres_password secret_key grafana_admin_password'",
        "TALLY_PUBLIC_HOST='tally.example.com'",
        "TALLY_AWS_REGION='eu-west-1'",
      ] : contains(split("\n", one([for f in yamldecode(output.user_data).write_files : f.content if f.path == "/etc/tally/bootstrap.env"])), line)
    ])
    error_message = "bootstrap.env must pin the repository ref, the data volume and the SSM secret path."
  }

  assert {
    condition = jsondecode(one([
      for f in yamldecode(output.user_data).write_files : f.content
      if f.path == "/etc/docker/daemon.json"
    ]))["data-root"] == "/srv/tally-data/docker"
    error_message = "Docker's data root must be on the data volume."
  }

  assert {
    condition     = strcontains(output.user_data, "RequiresMountsFor=/srv/tally-data")
    error_message = "Docker must not start before the data volume is mounted."
  }

  assert {
    condition = alltrue([
      for s in ["aws ssm get-parameter", "--with-decryption", "--type SecureString", "openssl rand -hex 32", "blkid -p", "mkfs.ext4", "fetch -q --depth 1 origin \"$TALLY_REPO_REF\""] :
      strcontains(output.user_data, s)
    ])
    error_message = "The bootstrap must read (or create) secrets in SSM, format only blank volumes and fetch the pinned ref."
  }

  assert {
    condition     = !can(regex("(?i)(password|secret_key|secret)['\"]?\\s*[=:]\\s*['\"]?[A-Za-z0-9+/_-]{8,}", output.user_data))
    error_message = "User data must not contain a secret value."
  }

  assert {
    condition     = !anytrue([for f in yamldecode(output.user_data).write_files : strcontains(f.path, "secrets")])
    error_message = "cloud-init must not write secret files: the bootstrap fetches them from SSM."
  }

  assert {
    condition     = aws_instance.this.user_data_base64 == base64gzip(output.user_data)
    error_message = "The instance must boot with exactly the rendered cloud-init, gzip-compressed."
  }

  assert {
    condition     = length(aws_instance.this.user_data_base64) < 16384
    error_message = "EC2 user data is limited to 16 KiB."
  }
}


run "no_domain_age_recipient_ssm_prefix" {
  command = plan

  variables {
    backup_age_recipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
    ssm_parameter_prefix = "/tally/prod"
    domain               = ""
    acme_email           = "ops@example.com"
  }

  assert {
    condition = alltrue([
      for s in ["TALLY_PUBLIC_HOST='198.51.100.10'", "\n      DOMAIN='198.51.100.10'", "\n      ACME_EMAIL=''"] :
      strcontains(output.user_data, s)
    ])
    error_message = "Without a domain, DOMAIN is the Elastic IP (what visitors and the health check send as Host) and no ACME e-mail is set."
  }

  assert {
    condition = alltrue([
      for s in ["\n      BACKUP_S3_BUCKET='tally-backups-123456789012-eu-west-1'", "\n      COMPOSE_FILE='compose.yaml:backup/compose.offsite.yaml'"] :
      strcontains(output.user_data, s)
    ])
    error_message = "An age recipient must switch the offsite copy on: bucket name and the offsite compose overlay."
  }

  assert {
    condition     = strcontains(output.user_data, "TALLY_BACKUP_AGE_RECIPIENT='age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p'")
    error_message = "The age recipient (a public key) must reach the bootstrap."
  }

  assert {
    condition     = strcontains(output.user_data, "TALLY_SSM_PREFIX='/tally/prod'") && output.ssm_parameter_prefix == "/tally/prod"
    error_message = "ssm_parameter_prefix must be used."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_iam_role_policy.instance.policy).Statement :
      s.Resource == "arn:aws:ssm:eu-west-1:123456789012:parameter/tally/prod/*"
    ])
    error_message = "The role's SSM permission must follow ssm_parameter_prefix."
  }
}

run "runs_the_pipeline_images_by_digest" {
  command = plan

  variables {
    tally_image        = "registry.example.com/tally:1.3.0-build.57@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    tally_backup_image = "registry.example.com/tally/backup:1.3.0-build.57@sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
  }

  assert {
    condition = alltrue([
      for line in [
        "TALLY_IMAGE='registry.example.com/tally:1.3.0-build.57@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'",
        "TALLY_BACKUP_IMAGE='registry.example.com/tally/backup:1.3.0-build.57@sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210'",
      ] : strcontains(one([for f in yamldecode(output.user_data).write_files : f.content if f.path == "/etc/tally/stack.env"]), line)
    ])
    error_message = "The stack must run the pipeline's images, pinned by digest."
  }
}
