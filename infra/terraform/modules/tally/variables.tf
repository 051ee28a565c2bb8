###############################################################################
# Naming
###############################################################################

variable "name" {
  description = "Name of this deployment; prefixes every resource name and tag. Lowercase letters, digits and dashes."
  type        = string
  default     = "tally"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3-24 characters of lowercase letters, digits and dashes, starting with a letter (it ends up in the S3 bucket name)."
  }
}

variable "tags" {
  description = "Extra tags applied to every resource that supports tags."
  type        = map(string)
  default     = {}
}

###############################################################################
# Network
###############################################################################

variable "create_vpc" {
  description = "true: create a dedicated VPC with one public subnet. false: use the account's default VPC (it must exist in the region)."
  type        = bool
  default     = true

  validation {
    condition     = var.database == "container" || var.create_vpc
    error_message = "database = \"rds\" needs create_vpc = true: the module puts the database in private subnets of its own VPC."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the VPC created when create_vpc is true."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && can(regex("^[0-9.]+/(1[6-9]|2[0-8])$", var.vpc_cidr))
    error_message = "vpc_cidr must be an IPv4 CIDR with a prefix between /16 and /28."
  }
}

variable "public_subnet_cidr" {
  description = "CIDR of the public subnet (inside vpc_cidr) when create_vpc is true."
  type        = string
  default     = "10.42.1.0/24"

  validation {
    condition     = can(cidrhost(var.public_subnet_cidr, 0)) && can(regex("^[0-9.]+/(1[6-9]|2[0-8])$", var.public_subnet_cidr))
    error_message = "public_subnet_cidr must be an IPv4 CIDR with a prefix between /16 and /28."
  }
}

variable "availability_zone" {
  description = "Availability zone for the instance and its data volume (they must share one). null: the region's first available zone. Changing it later would need a new data volume: pick once."
  type        = string
  default     = null

  validation {
    condition     = var.availability_zone == null || can(regex("^[a-z]{2}(-[a-z]+)+-[0-9][a-z]$", var.availability_zone))
    error_message = "availability_zone must look like eu-west-1a, or be null."
  }
}

variable "ssh_allowed_cidrs" {
  description = "CIDRs allowed to reach SSH (tcp/22). Empty (the default): no SSH at all, use SSM Session Manager. 0.0.0.0/0 or ::/0 is refused unless allow_ssh_from_anywhere is true."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.ssh_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "Every entry of ssh_allowed_cidrs must be a CIDR, e.g. 203.0.113.7/32."
  }

  validation {
    condition     = var.allow_ssh_from_anywhere || !anytrue([for c in var.ssh_allowed_cidrs : endswith(c, "/0")])
    error_message = "ssh_allowed_cidrs opens SSH to the whole internet (a /0 CIDR). Use your own address (x.x.x.x/32) or SSM Session Manager; set allow_ssh_from_anywhere = true only if you really mean it."
  }
}

variable "allow_ssh_from_anywhere" {
  description = "Explicit opt-in that lets ssh_allowed_cidrs contain 0.0.0.0/0 or ::/0. Leave false."
  type        = bool
  default     = false
}

variable "allowed_egress_tcp_ports" {
  description = "TCP ports the instance may reach on the internet. 80/443 cover apt, Docker Hub, git, ACME, S3, SSM; add 587 if Alertmanager sends mail over SMTP submission."
  type        = list(number)
  default     = [80, 443]

  validation {
    condition     = length(var.allowed_egress_tcp_ports) > 0 && alltrue([for p in var.allowed_egress_tcp_ports : p >= 1 && p <= 65535 && floor(p) == p])
    error_message = "allowed_egress_tcp_ports must be a non-empty list of TCP port numbers (1-65535)."
  }

  validation {
    condition     = contains(var.allowed_egress_tcp_ports, 443)
    error_message = "allowed_egress_tcp_ports must contain 443: the instance cannot bootstrap (git, Docker Hub, S3, SSM) without it."
  }
}

###############################################################################
# Instance
###############################################################################

variable "instance_type" {
  description = "EC2 instance type. The whole stack (Traefik, app replicas, PostgreSQL, Prometheus, Grafana, exporters) needs at least 2 GiB of RAM: t3.small is the floor, t3.medium is comfortable. Graviton types (t4g...) select the arm64 Debian image."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[0-9]*[a-z]+$", var.instance_type))
    error_message = "instance_type must look like t3.small or m7g.large."
  }

  validation {
    condition     = !can(regex("\\.(nano|micro)$", var.instance_type))
    error_message = "nano and micro instances have less than 2 GiB of RAM and cannot run the stack; use t3.small or larger."
  }
}

variable "ami_id" {
  description = "AMI to boot instead of the newest official Debian 12 image. It must be Debian 12 (the bootstrap uses apt and Debian package names)."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must look like ami-0123456789abcdef0, or be null."
  }
}

variable "ssh_key_name" {
  description = "Name of an existing EC2 key pair for SSH. null: no key (SSM Session Manager only)."
  type        = string
  default     = null
}

variable "enable_ssm" {
  description = "Install the SSM agent and grant the instance the AmazonSSMManagedInstanceCore policy, for shell access without SSH."
  type        = bool
  default     = true
}

variable "detailed_monitoring" {
  description = "Enable 1-minute EC2 detailed monitoring (about 2 USD/month extra). The stack has its own Prometheus, so it is off by default."
  type        = bool
  default     = false
}

variable "root_volume_size" {
  description = "Root volume size in GiB (OS, the repository checkout, images are on the data volume)."
  type        = number
  default     = 16

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 1024
    error_message = "root_volume_size must be between 8 and 1024 GiB."
  }
}

variable "data_volume_size" {
  description = "Data volume size in GiB. It holds Docker's data root: images, PostgreSQL data, Prometheus TSDB, local backups, certificates. Can be grown later (see docs/deploy-aws.md), never shrunk."
  type        = number
  default     = 30

  validation {
    condition     = var.data_volume_size >= 10 && var.data_volume_size <= 16384
    error_message = "data_volume_size must be between 10 and 16384 GiB."
  }
}

variable "ebs_kms_key_arn" {
  description = "Customer-managed KMS key for the root and data volumes. null: the account's default EBS key (aws/ebs)."
  type        = string
  default     = null

  validation {
    condition     = var.ebs_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.ebs_kms_key_arn))
    error_message = "ebs_kms_key_arn must be a KMS key ARN, or null."
  }
}

variable "data_volume_snapshots" {
  description = "Take daily EBS snapshots of the data volume with Data Lifecycle Manager (a second safety net besides the logical backups in S3)."
  type        = bool
  default     = true
}

variable "snapshot_retention_count" {
  description = "Number of daily data-volume snapshots kept."
  type        = number
  default     = 7

  validation {
    condition     = var.snapshot_retention_count >= 1 && var.snapshot_retention_count <= 1000
    error_message = "snapshot_retention_count must be between 1 and 1000."
  }
}

variable "swap_size_mb" {
  description = "Size of a swap file created on the root volume at first boot (MiB); 0 disables. A small instance survives memory spikes with it."
  type        = number
  default     = 2048

  validation {
    condition     = var.swap_size_mb >= 0 && var.swap_size_mb <= 65536 && floor(var.swap_size_mb) == var.swap_size_mb
    error_message = "swap_size_mb must be an integer between 0 and 65536."
  }
}

###############################################################################
# Scale: managed PostgreSQL and a swarm of app hosts (docs/scaling.md)
###############################################################################

variable "database" {
  description = "Where PostgreSQL runs. \"container\": in the stack on the server's data volume (single server, Compose). \"rds\": Amazon RDS for PostgreSQL 15 in private subnets (Multi-AZ, encrypted, automated backups, TLS required); the stack then runs on Docker Swarm (docs/scaling.md, \"Managed PostgreSQL\")."
  type        = string
  default     = "container"

  validation {
    condition     = contains(["container", "rds"], var.database)
    error_message = "database must be \"container\" or \"rds\"."
  }
}

variable "app_hosts" {
  description = "Number of EC2 hosts running the stack. 1: one server. More: one Docker Swarm of a manager (the Elastic IP, Traefik, Prometheus, Alertmanager, Grafana, the backup sidecar) and app_hosts - 1 workers for app replicas, spread over availability zones. More than 1 needs database = \"rds\": a self-hosted PostgreSQL would pin the data to one host anyway."
  type        = number
  default     = 1

  validation {
    condition     = var.app_hosts >= 1 && var.app_hosts <= 10 && floor(var.app_hosts) == var.app_hosts
    error_message = "app_hosts must be an integer between 1 and 10."
  }

  validation {
    condition     = var.app_hosts == 1 || var.database == "rds"
    error_message = "app_hosts > 1 needs database = \"rds\": with the database in a container the data stays on one host, so more hosts add no capacity worth their cost (docs/scaling.md)."
  }
}

variable "worker_instance_type" {
  description = "EC2 instance type of the swarm workers (app replicas only). null: instance_type."
  type        = string
  default     = null

  validation {
    condition     = var.worker_instance_type == null || can(regex("^[a-z][a-z0-9-]*\\.[0-9]*[a-z]+$", var.worker_instance_type))
    error_message = "worker_instance_type must look like t3.small or m7g.large, or be null."
  }
}

variable "extra_public_subnet_cidrs" {
  description = "CIDRs (inside vpc_cidr) of the public subnets created in further availability zones for the swarm workers, when app_hosts > 1."
  type        = list(string)
  default     = ["10.42.2.0/24", "10.42.3.0/24"]

  validation {
    condition     = alltrue([for c in var.extra_public_subnet_cidrs : can(cidrhost(c, 0))])
    error_message = "Every entry of extra_public_subnet_cidrs must be an IPv4 CIDR."
  }
}

variable "private_subnet_cidrs" {
  description = "CIDRs (inside vpc_cidr) of the two private subnets, in two availability zones, holding the RDS instance and its Multi-AZ standby. They have no route to the internet."
  type        = list(string)
  default     = ["10.42.101.0/24", "10.42.102.0/24"]

  validation {
    condition     = length(var.private_subnet_cidrs) == 2 && alltrue([for c in var.private_subnet_cidrs : can(cidrhost(c, 0))])
    error_message = "private_subnet_cidrs must be two IPv4 CIDRs."
  }
}

variable "db_instance_class" {
  description = "RDS instance class when database = \"rds\". db.t4g.small (2 GiB) is about 2 x 24 USD/month with Multi-AZ in eu-west-1; the database ceiling is several times the app's (docs/capacity.md)."
  type        = string
  default     = "db.t4g.small"

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[0-9]*[a-z]+$", var.db_instance_class))
    error_message = "db_instance_class must look like db.t4g.small or db.m7g.large."
  }
}

variable "db_allocated_storage" {
  description = "Initial RDS storage in GiB (gp3); storage autoscaling may grow it up to db_max_allocated_storage."
  type        = number
  default     = 20

  validation {
    condition     = var.db_allocated_storage >= 20 && var.db_allocated_storage <= 65536
    error_message = "db_allocated_storage must be between 20 and 65536 GiB."
  }
}

variable "db_max_allocated_storage" {
  description = "Upper bound in GiB of RDS storage autoscaling."
  type        = number
  default     = 100

  validation {
    condition     = var.db_max_allocated_storage >= var.db_allocated_storage && var.db_max_allocated_storage <= 65536
    error_message = "db_max_allocated_storage must be at least db_allocated_storage and at most 65536 GiB."
  }
}

variable "db_multi_az" {
  description = "Run the RDS instance with a synchronous standby in a second availability zone (automatic failover, doubles the instance cost)."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days RDS keeps automated backups (daily snapshots + transaction logs: point-in-time recovery inside that window)."
  type        = number
  default     = 7

  validation {
    condition     = var.db_backup_retention_days >= 7 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be between 7 and 35."
  }
}

variable "db_kms_key_arn" {
  description = "Customer-managed KMS key for the RDS storage, its snapshots and its master password secret. null: the module creates one (about 1 USD/month)."
  type        = string
  default     = null

  validation {
    condition     = var.db_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.db_kms_key_arn))
    error_message = "db_kms_key_arn must be a KMS key ARN, or null."
  }
}

###############################################################################
# Application
###############################################################################

variable "repo_url" {
  description = "HTTPS URL of the Tally git repository the instance clones."
  type        = string

  validation {
    condition     = can(regex("^https://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/-]+$", var.repo_url))
    error_message = "repo_url must be an https:// git URL without credentials or quotes, e.g. https://github.com/example/tally.git."
  }
}

variable "tally_image" {
  description = "App image to run, pinned by digest (registry/tally:TAG@sha256:...): the TALLY_IMAGE the pipeline built and scanned. Empty: build from the checkout (not scanned). The host must be able to pull it (a public registry or a docker login)."
  type        = string
  default     = ""

  validation {
    condition     = var.tally_image == "" || can(regex("^[a-z0-9][a-z0-9._:/-]*@sha256:[0-9a-f]{64}$", var.tally_image))
    error_message = "tally_image must be an image reference pinned by digest (...@sha256:<64 hex>), or empty."
  }

  validation {
    condition     = var.database == "container" || var.tally_image != ""
    error_message = "database = \"rds\" runs the stack on Docker Swarm, whose nodes pull images and never build: set tally_image and tally_backup_image (pinned by digest)."
  }
}

variable "tally_backup_image" {
  description = "Backup sidecar image, pinned by digest: the TALLY_BACKUP_IMAGE of the same pipeline. Required with tally_image."
  type        = string
  default     = ""

  validation {
    condition     = var.tally_backup_image == "" || can(regex("^[a-z0-9][a-z0-9._:/-]*@sha256:[0-9a-f]{64}$", var.tally_backup_image))
    error_message = "tally_backup_image must be an image reference pinned by digest (...@sha256:<64 hex>), or empty."
  }

  validation {
    condition     = (var.tally_image == "") == (var.tally_backup_image == "")
    error_message = "Set tally_image and tally_backup_image together (both from the same pipeline), or neither."
  }
}

variable "repo_ref" {
  description = "Git ref deployed: a release tag (recommended, e.g. v1.0.0) or a full commit SHA. Changing it replaces the instance (data survives on the data volume)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$", var.repo_ref)) && !strcontains(var.repo_ref, "..")
    error_message = "repo_ref must be a tag, branch or commit SHA: letters, digits, '.', '_', '/', '-', not starting with '-'."
  }
}

variable "domain" {
  description = "Public DNS name of the site (DOMAIN for Traefik/Let's Encrypt). Empty: no domain, DOMAIN becomes the Elastic IP and the site is served there with Traefik's self-signed certificate."
  type        = string
  default     = ""

  validation {
    condition     = var.domain == "" || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.domain))
    error_message = "domain must be a lowercase DNS name such as tally.example.com, or empty."
  }
}

variable "acme_email" {
  description = "Contact e-mail for Let's Encrypt (ACME_EMAIL). Required when domain is set."
  type        = string
  default     = ""

  validation {
    condition     = var.acme_email == "" || can(regex("^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}$", var.acme_email))
    error_message = "acme_email must be an e-mail address, or empty."
  }

  validation {
    condition     = var.domain == "" || var.acme_email != ""
    error_message = "acme_email is required when domain is set: Let's Encrypt needs a contact address."
  }
}

variable "user_name" {
  description = "USER_NAME shown in the footer (\"Deployed by ...\")."
  type        = string
  default     = "n/a"

  validation {
    condition     = length(var.user_name) > 0 && length(var.user_name) <= 100 && !can(regex("['\"\\\\$`\\r\\n]", var.user_name))
    error_message = "user_name must be 1-100 characters without quotes, backslashes, '$', backticks or line breaks (it is written to the stack's .env file)."
  }
}

variable "user_url" {
  description = "USER_URL the footer links to."
  type        = string
  default     = "#"

  validation {
    condition     = var.user_url == "#" || can(regex("^https?://[^\\s'\"\\\\$`]+$", var.user_url))
    error_message = "user_url must be \"#\" or an http(s) URL without spaces, quotes, backslashes, '$' or backticks."
  }
}

variable "extra_env" {
  description = "Additional NON-SECRET variables written to the stack's .env (e.g. COMPOSE_PROFILES, WEB_CONCURRENCY). They are visible in the instance user data; secrets belong in SSM Parameter Store."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_env) : can(regex("^[A-Z][A-Z0-9_]*$", k))])
    error_message = "extra_env keys must be upper-case environment variable names."
  }

  validation {
    condition     = !anytrue([for k in keys(var.extra_env) : can(regex("(PASSWORD|SECRET|TOKEN|PRIVATE|CREDENTIAL|_KEY$|DSN)", k))])
    error_message = "extra_env must not carry secrets (names with PASSWORD, SECRET, TOKEN, PRIVATE, CREDENTIAL, DSN or ending in _KEY): user data is readable by anyone who can describe the instance. Store secrets in SSM Parameter Store under ssm_parameter_prefix."
  }

  validation {
    condition     = !anytrue([for v in values(var.extra_env) : can(regex("['\\r\\n]", v))])
    error_message = "extra_env values must not contain single quotes or line breaks."
  }

  validation {
    condition     = length(setintersection(keys(var.extra_env), ["DOMAIN", "ACME_EMAIL", "USER_NAME", "USER_URL", "BACKUP_S3_BUCKET", "BACKUP_S3_REGION", "AWS_DEFAULT_REGION"])) == 0
    error_message = "extra_env must not redefine DOMAIN, ACME_EMAIL, USER_NAME, USER_URL, BACKUP_S3_BUCKET, BACKUP_S3_REGION or AWS_DEFAULT_REGION: the module sets them."
  }
}

variable "ssm_parameter_prefix" {
  description = "SSM Parameter Store path holding the stack's secrets (<prefix>/postgres_password, /secret_key, /grafana_admin_password). The instance reads them at boot and creates missing ones with random values. null: \"/<name>\"."
  type        = string
  default     = null

  validation {
    condition     = var.ssm_parameter_prefix == null || can(regex("^(/[A-Za-z0-9_.-]+)+$", var.ssm_parameter_prefix))
    error_message = "ssm_parameter_prefix must be an absolute parameter path without a trailing slash, e.g. /tally/prod."
  }
}

variable "backup_age_recipient" {
  description = "age public key (age1..., from `age-keygen -y`) the backup sidecar encrypts offsite copies to. Setting it switches the offsite copy to the S3 bucket on (the sidecar never uploads unencrypted dumps). A public key is not a secret; keep the private key off the server."
  type        = string
  default     = ""

  validation {
    condition     = var.backup_age_recipient == "" || can(regex("^age1[02-9ac-hj-np-z]{58}$", var.backup_age_recipient))
    error_message = "backup_age_recipient must be an age X25519 public key (age1 followed by 58 bech32 characters), or empty."
  }
}

###############################################################################
# Offsite backups
###############################################################################

variable "backup_bucket_name" {
  description = "Name of the S3 bucket for offsite backups. null: \"<name>-backups-<account id>-<region>\" (globally unique)."
  type        = string
  default     = null

  validation {
    condition     = var.backup_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.backup_bucket_name))
    error_message = "backup_bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, dots, dashes)."
  }
}

variable "backup_bucket_force_destroy" {
  description = "Let terraform destroy delete the backup bucket even when it still holds backups. Leave false unless you are deliberately throwing the backups away."
  type        = bool
  default     = false
}

variable "backup_kms_key_arn" {
  description = "Customer-managed KMS key for the backup bucket. null: SSE-KMS with the AWS-managed aws/s3 key."
  type        = string
  default     = null

  validation {
    condition     = var.backup_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.backup_kms_key_arn))
    error_message = "backup_kms_key_arn must be a KMS key ARN, or null."
  }
}

variable "backup_expiration_days" {
  description = "Days after which a backup object is expired by the bucket lifecycle (a safety net; the sidecar's own retention normally deletes earlier). 0 disables expiry."
  type        = number
  default     = 400

  validation {
    condition     = var.backup_expiration_days == 0 || (var.backup_expiration_days >= 31 && var.backup_expiration_days <= 3650)
    error_message = "backup_expiration_days must be 0 (never) or between 31 and 3650."
  }
}

variable "backup_noncurrent_days" {
  description = "Days a deleted or overwritten backup stays recoverable as a noncurrent version (protects against a compromised host deleting backups)."
  type        = number
  default     = 30

  validation {
    condition     = var.backup_noncurrent_days >= 1 && var.backup_noncurrent_days <= 3650
    error_message = "backup_noncurrent_days must be between 1 and 3650."
  }
}

variable "backup_object_lock_days" {
  description = "S3 Object Lock: days every backup object version is protected from deletion and overwrite."
  type        = number
  default     = 30

  validation {
    condition     = var.backup_object_lock_days >= 1 && var.backup_object_lock_days <= 3650
    error_message = "backup_object_lock_days must be between 1 and 3650."
  }
}

variable "backup_object_lock_mode" {
  description = "S3 Object Lock mode: GOVERNANCE (an admin with s3:BypassGovernanceRetention may still delete) or COMPLIANCE (nobody may, not even the account root, until the retention ends)."
  type        = string
  default     = "GOVERNANCE"

  validation {
    condition     = contains(["GOVERNANCE", "COMPLIANCE"], var.backup_object_lock_mode)
    error_message = "backup_object_lock_mode must be GOVERNANCE or COMPLIANCE."
  }
}

variable "backup_ia_transition_days" {
  description = "Days after which backups move to S3 Standard-IA (cheaper storage, 30-day minimum). 0 keeps them in Standard."
  type        = number
  default     = 30

  validation {
    condition     = var.backup_ia_transition_days == 0 || var.backup_ia_transition_days >= 30
    error_message = "backup_ia_transition_days must be 0 or at least 30 (S3 minimum for Standard-IA)."
  }
}

###############################################################################
# DNS, health check, alerting
###############################################################################

variable "route53_zone_id" {
  description = "Route53 hosted zone ID in which to create an A record for domain. null: manage DNS yourself (point domain at the public_ip output)."
  type        = string
  default     = null

  validation {
    condition     = var.route53_zone_id == null || can(regex("^Z[A-Z0-9]{1,31}$", var.route53_zone_id))
    error_message = "route53_zone_id must look like Z0123456789ABCDEFGHIJ, or be null."
  }

  validation {
    condition     = var.route53_zone_id == null || var.domain != ""
    error_message = "route53_zone_id needs domain: the record name is the domain."
  }
}

variable "dns_ttl" {
  description = "TTL (seconds) of the A record."
  type        = number
  default     = 300

  validation {
    condition     = var.dns_ttl >= 30 && var.dns_ttl <= 86400
    error_message = "dns_ttl must be between 30 and 86400 seconds."
  }
}

variable "enable_health_check" {
  description = "Create a Route53 HTTPS health check on /healthz (about 1.50 USD/month), a CloudWatch alarm on it and an SNS topic for notifications."
  type        = bool
  default     = true
}

variable "alarm_email" {
  description = "E-mail subscribed to the alarm SNS topic (AWS sends a confirmation mail first). null: no subscription."
  type        = string
  default     = null

  validation {
    condition     = var.alarm_email == null || can(regex("^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}$", var.alarm_email))
    error_message = "alarm_email must be an e-mail address, or null."
  }
}
