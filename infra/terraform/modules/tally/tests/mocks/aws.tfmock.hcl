# Realistic values for the data sources the module reads, so plans under the
# mock provider produce names and ARNs shaped like the real ones.

mock_data "aws_region" {
  defaults = {
    name = "eu-west-1"
  }
}

mock_data "aws_caller_identity" {
  defaults = {
    account_id = "123456789012"
  }
}

mock_data "aws_partition" {
  defaults = {
    partition = "aws"
  }
}

mock_data "aws_availability_zones" {
  defaults = {
    names = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
  }
}

mock_data "aws_ami" {
  defaults = {
    id = "ami-0123456789abcdef0"
  }
}

mock_data "aws_vpc" {
  defaults = {
    id = "vpc-0123456789abcdef0"
  }
}

mock_data "aws_subnets" {
  defaults = {
    ids = ["subnet-0123456789abcdef0"]
  }
}

mock_resource "aws_ebs_volume" {
  override_during = plan
  defaults = {
    id = "vol-0123456789abcdef0"
  }
}

mock_resource "aws_instance" {
  override_during = plan
  defaults = {
    id = "i-0123456789abcdef0"
  }
}

mock_resource "aws_eip" {
  override_during = plan
  defaults = {
    public_ip = "198.51.100.10"
  }
}
