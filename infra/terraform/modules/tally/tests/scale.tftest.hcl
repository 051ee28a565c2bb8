# database = "rds" and app_hosts > 1: RDS PostgreSQL in private subnets
# (encrypted, Multi-AZ, backed up, TLS required, reachable from the swarm
# hosts only) and a swarm of app hosts; bad combinations refused; the
# default single server has none of it.

mock_provider "aws" {
  source = "./tests/mocks"
}

mock_provider "aws" {
  alias  = "us_east_1"
  source = "./tests/mocks"
}

# Ids the plan cannot know, distinct per resource so the wiring is checked.
override_resource {
  target          = aws_security_group.instance
  override_during = plan
  values          = { id = "sg-server" }
}

override_resource {
  target          = aws_security_group.node
  override_during = plan
  values          = { id = "sg-swarm" }
}

override_resource {
  target          = aws_security_group.db
  override_during = plan
  values          = { id = "sg-db" }
}

override_resource {
  target          = aws_subnet.public
  override_during = plan
  values          = { id = "subnet-zone-a" }
}

override_resource {
  target          = aws_subnet.public_extra
  override_during = plan
  values          = { id = "subnet-other-zones" }
}

override_resource {
  target          = aws_subnet.private
  override_during = plan
  values          = { id = "subnet-private" }
}

override_resource {
  target          = aws_kms_key.db
  override_during = plan
  values          = { arn = "arn:aws:kms:eu-west-1:123456789012:key/0000-db" }
}

override_resource {
  target          = aws_db_parameter_group.this
  override_during = plan
  values          = { name = "tally-pg15-0001" }
}

override_resource {
  target          = aws_db_instance.this
  override_during = plan
  values = {
    address            = "tally-0001.abcdefghijkl.eu-west-1.rds.amazonaws.com"
    endpoint           = "tally-0001.abcdefghijkl.eu-west-1.rds.amazonaws.com:5432"
    master_user_secret = [{ secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-0001", kms_key_id = "k", secret_status = "active" }]
  }
}

variables {
  repo_url           = "https://github.com/example/tally.git"
  repo_ref           = "v1.0.0"
  tally_image        = "registry.example.com/tally@sha256:0000000000000000000000000000000000000000000000000000000000000000"
  tally_backup_image = "registry.example.com/tally-backup@sha256:1111111111111111111111111111111111111111111111111111111111111111"
}

run "default_is_one_server_without_rds_or_swarm" {
  command = plan

  variables {
    tally_image        = ""
    tally_backup_image = ""
  }

  assert {
    condition = (
      length(aws_db_instance.this) == 0 && length(aws_security_group.node) == 0 && length(aws_instance.worker) == 0 &&
      length(aws_subnet.private) == 0 && length(aws_subnet.public_extra) == 0 && length(aws_kms_key.db) == 0 &&
      length(aws_vpc_security_group_ingress_rule.swarm_manager) == 0 && length(aws_iam_role.worker) == 0
    )
    error_message = "The default (database = container, app_hosts = 1) must create no database, swarm or worker resource."
  }

  assert {
    condition     = aws_instance.this.vpc_security_group_ids == toset(["sg-server"])
    error_message = "The single server keeps its one security group."
  }

  assert {
    condition = (
      yamldecode(output.user_data).runcmd == [["/usr/local/sbin/tally-bootstrap"]] &&
      !strcontains(output.user_data, "tally-swarm") && !strcontains(output.user_data, "TALLY_SWARM") &&
      strcontains(output.user_data, "\"live-restore\": true\n") && !strcontains(output.user_data, "no-new-privileges")
    )
    error_message = "The single server's cloud-init must stay the Compose bootstrap, without any swarm setting."
  }

  assert {
    condition     = !strcontains(jsonencode(aws_iam_role_policy.instance.policy), "secretsmanager") && !strcontains(jsonencode(aws_iam_role_policy.instance.policy), "-swarm/")
    error_message = "The single server's role gains nothing."
  }
}

run "rds_one_host" {
  command = plan

  variables {
    database = "rds"
  }

  assert {
    condition = (
      aws_db_instance.this[0].engine == "postgres" && aws_db_instance.this[0].engine_version == "15" &&
      aws_db_instance.this[0].storage_encrypted == true && aws_db_instance.this[0].kms_key_id == "arn:aws:kms:eu-west-1:123456789012:key/0000-db" &&
      aws_kms_key.db[0].enable_key_rotation == true
    )
    error_message = "RDS must be PostgreSQL 15, encrypted with the module's rotating KMS key."
  }

  assert {
    condition = (
      aws_db_instance.this[0].multi_az == true && aws_db_instance.this[0].backup_retention_period >= 7 &&
      aws_db_instance.this[0].deletion_protection == true && aws_db_instance.this[0].skip_final_snapshot == false &&
      aws_db_instance.this[0].final_snapshot_identifier == "tally-final"
    )
    error_message = "RDS must be Multi-AZ, keep >= 7 days of backups, be deletion-protected and leave a final snapshot."
  }

  assert {
    condition = (
      aws_db_instance.this[0].publicly_accessible == false &&
      aws_db_subnet_group.this[0].subnet_ids == toset(["subnet-private"]) &&
      length(aws_subnet.private) == 2 && aws_subnet.private[0].availability_zone != aws_subnet.private[1].availability_zone &&
      alltrue([for s in aws_subnet.private : s.map_public_ip_on_launch == false]) &&
      length(aws_route_table_association.public) == 1
    )
    error_message = "RDS must sit in two private subnets (two zones, no internet route) and not be publicly accessible."
  }

  assert {
    condition = (
      aws_db_instance.this[0].manage_master_user_password == true && aws_db_instance.this[0].password == null &&
      aws_db_instance.this[0].username == "tally" && aws_db_instance.this[0].db_name == "tally"
    )
    error_message = "The master user is the stack's bootstrap user tally, its password kept by RDS in Secrets Manager."
  }

  assert {
    condition     = [for p in aws_db_parameter_group.this[0].parameter : p.value if p.name == "rds.force_ssl"] == ["1"] && aws_db_instance.this[0].parameter_group_name == "tally-pg15-0001"
    error_message = "The parameter group must require TLS (rds.force_ssl = 1)."
  }

  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.db_from_hosts[0].from_port == 5432 &&
      aws_vpc_security_group_ingress_rule.db_from_hosts[0].to_port == 5432 &&
      aws_vpc_security_group_ingress_rule.db_from_hosts[0].referenced_security_group_id == "sg-swarm" &&
      aws_vpc_security_group_ingress_rule.db_from_hosts[0].cidr_ipv4 == null &&
      aws_db_instance.this[0].vpc_security_group_ids == toset(["sg-db"]) &&
      aws_instance.this.vpc_security_group_ids == toset(["sg-server", "sg-swarm"])
    )
    error_message = "5432 is open to the swarm hosts' security group only, and the server is in it."
  }

  assert {
    condition = (
      yamldecode(output.user_data).runcmd == [["/usr/local/sbin/tally-swarm"]] &&
      strcontains(output.user_data, "TALLY_SWARM_ROLE='manager'") &&
      strcontains(output.user_data, "TALLY_DATABASE_HOST='tally-0001.abcdefghijkl.eu-west-1.rds.amazonaws.com'") &&
      strcontains(output.user_data, "TALLY_DB_PASSWORD_SECRET='arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-0001'") &&
      strcontains(output.user_data, "TALLY_DB_CA_URL='https://truststore.pki.rds.amazonaws.com/eu-west-1/eu-west-1-bundle.pem'") &&
      strcontains(output.user_data, "\"live-restore\": false") &&
      one([for f in yamldecode(output.user_data).write_files : f.content if f.path == "/usr/local/sbin/tally-swarm"]) == file("templates/swarm.sh")
    )
    error_message = "The manager's cloud-init must run tally-swarm with the database host, the CA bundle's address and live-restore off."
  }

  assert {
    condition     = length(aws_instance.this.user_data_base64) < 16384
    error_message = "EC2 user data is limited to 16 KiB: the manager's carries both scripts."
  }

  assert {
    condition = (
      [for st in jsondecode(aws_iam_role_policy.instance.policy).Statement : st.Resource if st.Sid == "DatabaseMasterPassword"] ==
      ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-0001"] &&
      [for st in jsondecode(aws_iam_role_policy.instance.policy).Statement : st.Condition if st.Sid == "DatabaseMasterPasswordKey"] ==
      [{ StringEquals = { "kms:ViaService" = "secretsmanager.eu-west-1.amazonaws.com" } }]
    )
    error_message = "The manager may read the RDS master secret only, and use the key only through Secrets Manager."
  }

  assert {
    condition     = length(aws_instance.worker) == 0 && output.worker_user_data == null
    error_message = "app_hosts = 1: a one-node swarm, no worker."
  }
}

run "three_hosts_in_one_swarm" {
  command = plan

  variables {
    database             = "rds"
    app_hosts            = 3
    backup_age_recipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
  }

  assert {
    condition = (
      length(aws_instance.worker) == 2 &&
      [for w in aws_instance.worker : w.subnet_id] == ["subnet-other-zones", "subnet-other-zones"] &&
      aws_instance.this.subnet_id == "subnet-zone-a" &&
      [for s in aws_subnet.public_extra : s.availability_zone] == ["eu-west-1b", "eu-west-1c"]
    )
    error_message = "Two workers, in the region's other two zones."
  }

  assert {
    condition = alltrue([for w in aws_instance.worker : (
      w.vpc_security_group_ids == toset(["sg-swarm"]) && w.associate_public_ip_address &&
      w.metadata_options[0].http_tokens == "required" && w.root_block_device[0].encrypted
    )])
    error_message = "Workers are in the swarm group only (no public ingress), IMDSv2, encrypted."
  }

  assert {
    condition = (
      { for k, r in aws_vpc_security_group_ingress_rule.swarm_peers : k => "${r.ip_protocol}/${r.from_port}" } ==
      { gossip_tcp = "tcp/7946", gossip_udp = "udp/7946", overlay = "udp/4789" } &&
      alltrue([for r in aws_vpc_security_group_ingress_rule.swarm_peers : r.referenced_security_group_id == "sg-swarm" && r.security_group_id == "sg-swarm" && r.cidr_ipv4 == null])
    )
    error_message = "Swarm peer ports (7946 tcp+udp, 4789 udp) open between swarm hosts only."
  }

  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.swarm_manager[0].security_group_id == "sg-server" &&
      aws_vpc_security_group_ingress_rule.swarm_manager[0].from_port == 2377 &&
      aws_vpc_security_group_ingress_rule.swarm_manager[0].ip_protocol == "tcp" &&
      aws_vpc_security_group_ingress_rule.swarm_manager[0].referenced_security_group_id == "sg-swarm"
    )
    error_message = "2377/tcp is open on the manager only, from swarm hosts only."
  }

  assert {
    condition = (
      [for f in yamldecode(output.worker_user_data).write_files : f.path] == ["/etc/tally/bootstrap.env", "/usr/local/sbin/tally-bootstrap", "/usr/local/sbin/tally-swarm", "/etc/docker/daemon.json"] &&
      one([for f in yamldecode(output.worker_user_data).write_files : f.content if f.path == "/etc/tally/bootstrap.env"]) == join("\n", [
        "TALLY_AWS_REGION='eu-west-1'",
        "TALLY_INSTALL_SSM_AGENT='true'",
        "TALLY_SWAP_MB='2048'",
        "TALLY_SWARM_JOIN_PARAM='/tally-swarm/worker-join'",
        "TALLY_SWARM_ROLE='worker'",
        "",
      ]) &&
      !strcontains(output.worker_user_data, "data-root") && yamldecode(output.worker_user_data).runcmd == [["/usr/local/sbin/tally-swarm"]]
    )
    error_message = "A worker's cloud-init joins the swarm and carries no data volume, checkout, stack or offsite settings."
  }

  # Offsite copies as on one host: the manager (tally-swarm) writes the
  # recipient and the role's credentials from these, and renders the overlay.
  assert {
    condition = (
      contains(split("\n", one([for f in yamldecode(output.user_data).write_files : f.content if f.path == "/etc/tally/bootstrap.env"])),
      "TALLY_BACKUP_AGE_RECIPIENT='age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p'") &&
      alltrue([for line in ["BACKUP_S3_BUCKET='tally-backups-123456789012-eu-west-1'", "BACKUP_S3_REGION='eu-west-1'", "AWS_DEFAULT_REGION='eu-west-1'"] :
      contains(split("\n", one([for f in yamldecode(output.user_data).write_files : f.content if f.path == "/etc/tally/stack.env"])), line)]) &&
      length(aws_instance.this.user_data_base64) < 16384
    )
    error_message = "With backup_age_recipient the manager's cloud-init must carry the recipient and the bucket, within 16 KiB."
  }

  assert {
    condition = (
      [for st in jsondecode(aws_iam_role_policy.instance.policy).Statement : st.Resource if st.Sid == "BackupObjects"] == ["arn:aws:s3:::tally-backups-123456789012-eu-west-1/*"] &&
      !strcontains(aws_iam_role_policy.instance.policy, "s3:Delete") && !strcontains(aws_iam_role_policy.worker[0].policy, "s3:")
    )
    error_message = "The manager's role may write the offsite copies (never delete them); workers get no S3 access."
  }

  assert {
    condition = (
      jsondecode(aws_iam_role_policy.worker[0].policy).Statement == [{
        Sid      = "SwarmJoinToken"
        Effect   = "Allow"
        Action   = ["ssm:GetParameter"]
        Resource = "arn:aws:ssm:eu-west-1:123456789012:parameter/tally-swarm/worker-join"
      }]
    )
    error_message = "Workers may read the join token and nothing else."
  }

  assert {
    condition = contains(
      [for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : s.Resource if s.Sid == "SwarmJoinToken"],
      "arn:aws:ssm:eu-west-1:123456789012:parameter/tally-swarm/worker-join"
    )
    error_message = "The manager may write the join token (outside the write-once secrets prefix)."
  }
}

# Every rule must catch its own case: each variable listed fails its own
# validation. (app_hosts > 1 with the container database: validation.tftest.hcl.)
run "refuses_unsupported_combinations" {
  command = plan

  variables {
    database                 = "rds"
    app_hosts                = 11
    create_vpc               = false
    tally_image              = ""
    tally_backup_image       = ""
    db_backup_retention_days = 3
  }

  expect_failures = [var.create_vpc, var.tally_image, var.app_hosts, var.db_backup_retention_days]
}
