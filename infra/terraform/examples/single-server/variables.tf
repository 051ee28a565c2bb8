# The most used knobs of the module; every other module variable keeps its
# default (see infra/terraform/modules/tally/variables.tf). Values are
# validated by the module.

variable "region" {
  description = "AWS region of the server, its volume and the backup bucket."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "environment" {
  description = "Environment tag on every resource (e.g. prod, staging)."
  type        = string
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,15}$", var.environment))
    error_message = "environment must be 1-16 lowercase letters, digits or dashes."
  }
}

variable "name" {
  description = "Deployment name, prefix of every resource."
  type        = string
  default     = "tally"
}

variable "instance_type" {
  description = "EC2 instance type: t3.small (2 GiB, the minimum) or t3.medium (4 GiB, comfortable)."
  type        = string
  default     = "t3.small"
}

variable "repo_url" {
  description = "HTTPS URL of the Tally repository the server clones."
  type        = string
}

variable "repo_ref" {
  description = "Release tag or commit SHA to deploy (changing it replaces the instance; data is kept)."
  type        = string
}

variable "domain" {
  description = "Public DNS name; empty serves the site on the Elastic IP with a self-signed certificate."
  type        = string
  default     = ""
}

variable "acme_email" {
  description = "Let's Encrypt contact address (required with domain)."
  type        = string
  default     = ""
}

variable "user_name" {
  description = "Footer \"Deployed by\" name."
  type        = string
  default     = "n/a"
}

variable "user_url" {
  description = "Footer \"Deployed by\" link."
  type        = string
  default     = "#"
}

variable "extra_env" {
  description = "Extra non-secret variables for the stack's .env."
  type        = map(string)
  default     = {}
}

variable "create_vpc" {
  description = "Create a dedicated VPC (true) or use the default VPC (false)."
  type        = bool
  default     = true
}

variable "ssh_allowed_cidrs" {
  description = "CIDRs allowed to SSH; empty = no SSH (use SSM Session Manager)."
  type        = list(string)
  default     = []
}

variable "allow_ssh_from_anywhere" {
  description = "Explicit opt-in for 0.0.0.0/0 in ssh_allowed_cidrs."
  type        = bool
  default     = false
}

variable "ssh_key_name" {
  description = "Existing EC2 key pair name, or null."
  type        = string
  default     = null
}

variable "data_volume_size" {
  description = "Data volume size (GiB)."
  type        = number
  default     = 30
}

variable "backup_age_recipient" {
  description = "age public key for encrypting offsite backups, or empty."
  type        = string
  default     = ""
}

variable "route53_zone_id" {
  description = "Route53 zone for the domain's A record, or null to manage DNS elsewhere."
  type        = string
  default     = null
}

variable "enable_health_check" {
  description = "Route53 HTTPS health check on /healthz + CloudWatch alarm + SNS topic."
  type        = bool
  default     = true
}

variable "alarm_email" {
  description = "E-mail subscribed to the health-check alarm, or null."
  type        = string
  default     = null
}
