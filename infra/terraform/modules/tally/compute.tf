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
  vpc_security_group_ids = [aws_security_group.instance.id]
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
    bootstrap_env    = join("", [for k in sort(keys(local.bootstrap_settings)) : "${k}='${local.bootstrap_settings[k]}'\n"])
    stack_env        = join("", [for k in sort(keys(local.stack_settings)) : "${k}='${local.stack_settings[k]}'\n"])
    bootstrap_script = file("${path.module}/templates/bootstrap.sh")
    data_mount       = local.data_mount
  })
}
