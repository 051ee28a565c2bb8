# The server: one EC2 instance booted from the official Debian 12 image,
# configured entirely by cloud-init (templates/cloud-init.yaml.tftpl). It is
# disposable: state lives on the data volume (storage.tf), in S3 and in SSM,
# and the public address on the Elastic IP.

locals {
  # Graviton families carry a "g" after the generation digit (t4g, m7g,
  # c6gn, r7gd...); everything else is x86_64.
  architecture = can(regex("^[a-z]+[0-9]+[a-z]*g[a-z]*\\.", var.instance_type)) ? "arm64" : "x86_64"
  debian_arch  = local.architecture == "arm64" ? "arm64" : "amd64"

  ami_id = var.ami_id != null ? var.ami_id : data.aws_ami.debian[0].id
}

data "aws_ami" "debian" {
  count = var.ami_id == null ? 1 : 0

  most_recent = true
  # Debian's own AWS account (published on https://wiki.debian.org/Cloud/AmazonEC2Image).
  owners = ["136693071363"]

  filter {
    name   = "name"
    values = ["debian-12-${local.debian_arch}-*"]
  }

  filter {
    name   = "architecture"
    values = [local.architecture]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }

  filter {
    name   = "root-device-type"
    values = ["ebs"]
  }
}

resource "aws_instance" "this" {
  #checkov:skip=CKV_AWS_126:Detailed monitoring is a variable (detailed_monitoring), off by default: the stack ships its own Prometheus and node-exporter.
  ami                    = local.ami_id
  instance_type          = var.instance_type
  availability_zone      = local.availability_zone
  subnet_id              = local.subnet_id
  vpc_security_group_ids = concat([aws_security_group.instance.id], aws_security_group.node[*].id)
  iam_instance_profile   = aws_iam_instance_profile.instance.name
  key_name               = var.ssh_key_name
  monitoring             = var.detailed_monitoring
  ebs_optimized          = true

  # The Elastic IP is the only public address; the bootstrap retries its
  # downloads until the association is in place.
  associate_public_ip_address = false

  # Compressed: the script alone is close to EC2's 16 KiB user-data limit,
  # and cloud-init unpacks gzip transparently.
  user_data_base64 = base64gzip(local.user_data)
  # cloud-init runs once per instance, so a changed configuration (e.g. a new
  # repo_ref) only takes effect on a fresh instance. The data volume, the
  # Elastic IP and the SSM secrets carry over.
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
    # 1: only the host reaches IMDS, no container can fetch the role's
    # credentials. The backup sidecar gets them from the host (tally-bootstrap
    # writes secrets/aws_credentials and a timer renews it).
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    encrypted             = true
    kms_key_id            = var.ebs_kms_key_arn
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    delete_on_termination = true
    tags                  = merge(local.tags, { Name = "${var.name}-root" })
  }

  maintenance_options {
    auto_recovery = "default"
  }

  tags = merge(local.tags, { Name = var.name })

  lifecycle {
    # A new Debian point release must not replace a running server on the
    # next plan; roll it deliberately with `terraform apply -replace=...`.
    ignore_changes = [ami]
  }
}

resource "aws_eip" "this" {
  domain = "vpc"
  tags   = merge(local.tags, { Name = var.name })

  # The address can only be used once the VPC has its internet gateway.
  depends_on = [aws_internet_gateway.this]
}

# A separate association keeps the address when the instance is replaced.
resource "aws_eip_association" "this" {
  allocation_id = aws_eip.this.id
  instance_id   = aws_instance.this.id
}

# cloud-init user data. It carries configuration only, never a secret: the
# instance reads its secrets from SSM Parameter Store at boot.
locals {
  data_mount = "/srv/tally-data"

  # Values are validated to contain no single quote or line break, so plain
  # single quoting is exact for both the shell and Compose's .env parser.
  bootstrap_settings = {
    TALLY_REPO_URL             = var.repo_url
    TALLY_REPO_REF             = var.repo_ref
    TALLY_AWS_REGION           = local.region
    TALLY_SSM_PREFIX           = local.ssm_parameter_prefix
    TALLY_SECRET_NAMES         = join(" ", local.secret_names)
    TALLY_DATA_VOLUME_ID       = aws_ebs_volume.data.id
    TALLY_DATA_MOUNT           = local.data_mount
    TALLY_PUBLIC_HOST          = local.public_host
    TALLY_INSTALL_SSM_AGENT    = tostring(var.enable_ssm)
    TALLY_SWAP_MB              = tostring(var.swap_size_mb)
    TALLY_BACKUP_AGE_RECIPIENT = var.backup_age_recipient
  }

  # database = "rds": the manager runs the rendered Swarm stack against RDS.
  # The stack's own database roles are generated into SSM like the other
  # secrets (secrets-init does it on one host); postgres_password is RDS's;
  # blackbox_web_config is derived from blackbox_password at boot (swarm.sh).
  swarm_settings = local.swarm ? {
    TALLY_SECRET_NAMES       = "secret_key grafana_admin_password db_app_password db_backup_password db_exporter_password blackbox_password"
    TALLY_SWARM_ROLE         = "manager"
    TALLY_SWARM_JOIN_PARAM   = local.swarm_join_parameter
    TALLY_DATABASE_HOST      = aws_db_instance.this[0].address
    TALLY_DB_PASSWORD_SECRET = try(aws_db_instance.this[0].master_user_secret[0].secret_arn, "")
    TALLY_DB_CA_URL          = local.db_ca_url
  } : {}
  # RDS's regional CA bundle, from AWS's trust store (docs/deploy-aws.md).
  db_ca_url = "https://truststore.pki.rds.amazonaws.com/${local.region}/${local.region}-bundle.pem"

  # The backup sidecar sends offsite copies only age-encrypted, so the copy
  # is switched on (bucket + compose overlay) only with a recipient key.
  offsite_backups = var.backup_age_recipient != ""

  stack_settings = merge(
    local.offsite_backups ? { COMPOSE_FILE = "compose.yaml:backup/compose.offsite.yaml" } : {},
    # The images the pipeline built and scanned (by digest): the server pulls
    # and runs them instead of building from the checkout.
    var.tally_image == "" ? {} : { TALLY_IMAGE = var.tally_image, TALLY_BACKUP_IMAGE = var.tally_backup_image },
    var.extra_env,
    {
      # Without a domain the routers must match the Elastic IP, the name
      # visitors and the Route53 health check send as Host.
      DOMAIN = local.public_host
      # Let's Encrypt needs a name; for a bare IP Traefik keeps its own cert.
      ACME_EMAIL         = var.domain != "" ? var.acme_email : ""
      USER_NAME          = var.user_name
      USER_URL           = var.user_url
      BACKUP_S3_BUCKET   = local.offsite_backups ? local.backup_bucket_name : ""
      BACKUP_S3_REGION   = local.region
      AWS_DEFAULT_REGION = local.region
    },
  )

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    bootstrap_env    = local.manager_bootstrap_env
    stack_env        = join("", [for k in sort(keys(local.stack_settings)) : "${k}='${local.stack_settings[k]}'\n"])
    bootstrap_script = file("${path.module}/templates/bootstrap.sh")
    data_mount       = local.data_mount
    # Swarm mode refuses Docker's live-restore, and ignores security_opt: a
    # swarm host's daemon sets no-new-privileges for every container instead.
    # Off, the template renders exactly what it did before swarm support (a
    # changed user data would replace the server).
    swarm        = local.swarm
    swarm_script = local.swarm ? file("${path.module}/templates/swarm.sh") : ""
  })

  manager_settings      = merge(local.bootstrap_settings, local.swarm_settings)
  manager_bootstrap_env = join("", [for k in sort(keys(local.manager_settings)) : "${k}='${local.manager_settings[k]}'\n"])

  # A worker installs Docker and joins; it has no data volume, no checkout,
  # no secrets and no stack.env.
  worker_settings = {
    TALLY_AWS_REGION        = local.region
    TALLY_INSTALL_SSM_AGENT = tostring(var.enable_ssm)
    TALLY_SWAP_MB           = tostring(var.swap_size_mb)
    TALLY_SWARM_ROLE        = "worker"
    TALLY_SWARM_JOIN_PARAM  = local.swarm_join_parameter
  }
  worker_user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    bootstrap_env    = join("", [for k in sort(keys(local.worker_settings)) : "${k}='${local.worker_settings[k]}'\n"])
    stack_env        = ""
    bootstrap_script = file("${path.module}/templates/bootstrap.sh")
    data_mount       = ""
    swarm            = true
    swarm_script     = file("${path.module}/templates/swarm.sh")
  })
}
