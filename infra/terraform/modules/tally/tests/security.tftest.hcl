# Network exposure, instance hardening and encryption, checked on the plan.

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

run "defaults_web_open_ssh_closed_instance_hardened" {
  command = plan

  assert {
    condition     = aws_instance.this.metadata_options[0].http_tokens == "required"
    error_message = "IMDSv2 (http_tokens = required) is mandatory."
  }

  assert {
    condition     = aws_instance.this.metadata_options[0].http_endpoint == "enabled" && aws_instance.this.metadata_options[0].http_put_response_hop_limit == 1
    error_message = "IMDS must answer the host only (hop limit 1): no container may fetch the instance role's credentials."
  }

  assert {
    condition     = aws_instance.this.root_block_device[0].encrypted == true
    error_message = "The root volume must be encrypted."
  }

  assert {
    condition     = aws_instance.this.associate_public_ip_address == false
    error_message = "The instance must get its public address from the Elastic IP only."
  }

  assert {
    condition     = aws_instance.this.ami == "ami-0123456789abcdef0" && aws_instance.this.instance_type == "t3.small"
    error_message = "Default instance: Debian AMI from the data source, t3.small."
  }

  assert {
    condition     = aws_instance.this.user_data_replace_on_change == true
    error_message = "A changed cloud-init must replace the instance (cloud-init runs once)."
  }

  assert {
    condition     = aws_ebs_volume.data.encrypted == true && aws_ebs_volume.data.type == "gp3" && aws_ebs_volume.data.size == 30
    error_message = "The data volume must be an encrypted 30 GiB gp3 volume by default."
  }

  assert {
    condition     = aws_ebs_volume.data.availability_zone == aws_instance.this.availability_zone && aws_ebs_volume.data.availability_zone == "eu-west-1a"
    error_message = "The data volume and the instance must share one availability zone."
  }

  assert {
    condition     = aws_volume_attachment.data.device_name == "/dev/sdf" && aws_volume_attachment.data.stop_instance_before_detaching == true
    error_message = "The data volume must be attached as /dev/sdf and detached only from a stopped instance."
  }

  assert {
    condition     = aws_eip.this.domain == "vpc"
    error_message = "An Elastic IP must give the server a stable address."
  }

  assert {
    condition     = length(aws_dlm_lifecycle_policy.data) == 1 && aws_dlm_lifecycle_policy.data[0].policy_details[0].target_tags["TallySnapshot"] == aws_ebs_volume.data.tags["TallySnapshot"]
    error_message = "The daily snapshot policy must target the data volume's tag."
  }

  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.http.from_port == 80 &&
      aws_vpc_security_group_ingress_rule.http.to_port == 80 &&
      aws_vpc_security_group_ingress_rule.http.ip_protocol == "tcp" &&
      aws_vpc_security_group_ingress_rule.http.cidr_ipv4 == "0.0.0.0/0"
    )
    error_message = "HTTP (80/tcp) must be open to the internet."
  }

  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.https.from_port == 443 &&
      aws_vpc_security_group_ingress_rule.https.to_port == 443 &&
      aws_vpc_security_group_ingress_rule.https.ip_protocol == "tcp" &&
      aws_vpc_security_group_ingress_rule.https.cidr_ipv4 == "0.0.0.0/0"
    )
    error_message = "HTTPS (443/tcp) must be open to the internet."
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.ssh) == 0
    error_message = "No SSH rule may exist when ssh_allowed_cidrs is empty (SSM only)."
  }

  assert {
    condition     = toset(keys(aws_vpc_security_group_egress_rule.tcp)) == toset(["80", "443"])
    error_message = "Egress must default to tcp/80 and tcp/443 only."
  }

  assert {
    condition     = alltrue([for r in aws_vpc_security_group_egress_rule.tcp : r.ip_protocol == "tcp" && r.from_port == r.to_port])
    error_message = "Egress rules must be single TCP ports, never all protocols."
  }

  assert {
    condition     = length(aws_iam_role_policy_attachment.ssm_core) == 1
    error_message = "SSM Session Manager access must be on by default (it replaces SSH)."
  }

  assert {
    condition     = length(aws_default_security_group.this[0].ingress) == 0 && length(aws_default_security_group.this[0].egress) == 0
    error_message = "The VPC's default security group must have no rules."
  }
}

run "ssh_only_from_allowed_cidrs" {
  command = plan

  variables {
    ssh_allowed_cidrs       = ["203.0.113.7/32", "2001:db8::/64", "0.0.0.0/0"]
    allow_ssh_from_anywhere = true
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.ssh["0.0.0.0/0"].cidr_ipv4 == "0.0.0.0/0"
    error_message = "The explicit opt-in must allow 0.0.0.0/0."
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.ssh) == 3
    error_message = "One SSH rule per allowed CIDR expected."
  }

  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.ssh["203.0.113.7/32"].cidr_ipv4 == "203.0.113.7/32" &&
      aws_vpc_security_group_ingress_rule.ssh["203.0.113.7/32"].from_port == 22 &&
      aws_vpc_security_group_ingress_rule.ssh["203.0.113.7/32"].to_port == 22
    )
    error_message = "SSH must be allowed on 22/tcp from exactly the given IPv4 CIDR."
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.ssh["2001:db8::/64"].cidr_ipv6 == "2001:db8::/64" && aws_vpc_security_group_ingress_rule.ssh["2001:db8::/64"].cidr_ipv4 == null
    error_message = "An IPv6 CIDR must land in cidr_ipv6."
  }
}



run "graviton_in_the_default_vpc" {
  command = plan

  variables {
    instance_type = "t4g.medium"
    create_vpc    = false
  }

  assert {
    condition     = length(aws_vpc.this) == 0 && aws_instance.this.subnet_id == "subnet-0123456789abcdef0"
    error_message = "create_vpc = false must use the default VPC's subnet and create no VPC."
  }

  assert {
    condition     = aws_security_group.instance.vpc_id == "vpc-0123456789abcdef0"
    error_message = "The security group must live in the default VPC."
  }

  assert {
    condition     = contains(flatten([for f in data.aws_ami.debian[0].filter : f.values]), "debian-12-arm64-*") && contains(flatten([for f in data.aws_ami.debian[0].filter : f.values]), "arm64")
    error_message = "A Graviton instance type must look up the arm64 Debian 12 image."
  }

  assert {
    condition     = contains(data.aws_ami.debian[0].owners, "136693071363")
    error_message = "The AMI must come from Debian's own account."
  }
}

run "ami_override_skips_lookup" {
  command = plan

  variables {
    ami_id = "ami-0fedcba9876543210"
  }

  assert {
    condition     = length(data.aws_ami.debian) == 0 && aws_instance.this.ami == "ami-0fedcba9876543210"
    error_message = "ami_id must bypass the AMI lookup."
  }
}

