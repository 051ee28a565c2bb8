# Either a small dedicated VPC (one public subnet, internet gateway) or the
# account's default VPC. There is no NAT gateway: the single instance sits in
# the public subnet behind its security group, which keeps the bill small.

resource "aws_vpc" "this" {
  count = var.create_vpc ? 1 : 0

  #checkov:skip=CKV2_AWS_11:Flow logs cost more than the whole single-server deployment; Traefik access logs and the security group cover its one host.
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = merge(local.tags, { Name = "${var.name}-vpc" })
}

# Strip every rule from the VPC's default security group so nothing attached
# to it by mistake is reachable.
resource "aws_default_security_group" "this" {
  count = var.create_vpc ? 1 : 0

  vpc_id  = aws_vpc.this[0].id
  ingress = []
  egress  = []
  tags    = merge(local.tags, { Name = "${var.name}-default-deny" })
}

resource "aws_internet_gateway" "this" {
  count = var.create_vpc ? 1 : 0

  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = "${var.name}-igw" })
}

resource "aws_subnet" "public" {
  count = var.create_vpc ? 1 : 0

  vpc_id            = aws_vpc.this[0].id
  cidr_block        = var.public_subnet_cidr
  availability_zone = local.availability_zone
  # The instance gets its public address from the Elastic IP only.
  map_public_ip_on_launch = false

  tags = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_route_table" "public" {
  count = var.create_vpc ? 1 : 0

  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_route" "public_default" {
  count = var.create_vpc ? 1 : 0

  route_table_id         = aws_route_table.public[0].id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this[0].id
}

resource "aws_route_table_association" "public" {
  count = var.create_vpc ? 1 : 0

  subnet_id      = aws_subnet.public[0].id
  route_table_id = aws_route_table.public[0].id
}

data "aws_vpc" "default" {
  count   = var.create_vpc ? 0 : 1
  default = true
}

data "aws_subnets" "default" {
  count = var.create_vpc ? 0 : 1

  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default[0].id]
  }

  filter {
    name   = "availability-zone"
    values = [local.availability_zone]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

locals {
  vpc_id    = var.create_vpc ? aws_vpc.this[0].id : data.aws_vpc.default[0].id
  subnet_id = var.create_vpc ? aws_subnet.public[0].id : data.aws_subnets.default[0].ids[0]
}
