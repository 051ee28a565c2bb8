# Single-server Tally on AWS: everything the module creates, in one region,
# plus the us-east-1 provider that the Route53 health-check alarm needs.

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Environment = var.environment
    }
  }
}

provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"

  default_tags {
    tags = {
      Environment = var.environment
    }
  }
}

module "tally" {
  source = "../../modules/tally"

  providers = {
    aws           = aws
    aws.us_east_1 = aws.us_east_1
  }

  name          = var.name
  instance_type = var.instance_type

  repo_url   = var.repo_url
  repo_ref   = var.repo_ref
  domain     = var.domain
  acme_email = var.acme_email
  user_name  = var.user_name
  user_url   = var.user_url
  extra_env  = var.extra_env

  create_vpc              = var.create_vpc
  ssh_allowed_cidrs       = var.ssh_allowed_cidrs
  allow_ssh_from_anywhere = var.allow_ssh_from_anywhere
  ssh_key_name            = var.ssh_key_name

  data_volume_size     = var.data_volume_size
  backup_age_recipient = var.backup_age_recipient

  route53_zone_id     = var.route53_zone_id
  enable_health_check = var.enable_health_check
  alarm_email         = var.alarm_email
}
