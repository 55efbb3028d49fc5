// Makes a cluster's principals (SCRAM credentials) and ACLs what a list
// says, through the Java Admin API that ships with the broker
// (kafka-clients). aiokafka has no ACL or SCRAM admin calls, and Kafka's own
// CLI needs one JVM start per resource pattern; this is one JVM for the
// whole list.
//
//   java -cp 'KAFKA_JARS/*' deploy/kafka/Provision.java CLIENT_PROPERTIES < commands
//
// CLIENT_PROPERTIES: an admin client's properties (bootstrap.servers,
// security.protocol, sasl.*). Commands arrive on stdin, so that passwords
// never appear in a process listing, one per line:
//
//   scram USER PASSWORD
//   keep USER                 a SCRAM user not to remove (set up otherwise)
//   acl PRINCIPAL RESOURCE_TYPE PATTERN_TYPE NAME OPERATION
//
// e.g. "acl User:ingest TOPIC LITERAL invoicing.invoice.received.v1 WRITE".
// The list is the whole truth: credentials are set (an existing one is
// replaced), ACLs are added, and ACLs and SCRAM users that are not listed
// (nor kept) are removed, so a grant taken out of the list is revoked.

import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialDeletion;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.clients.admin.UserScramCredentialsDescription;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class Provision {
    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: Provision CLIENT_PROPERTIES < commands");
            System.exit(2);
        }
        Properties props = new Properties();
        try (InputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        List<UserScramCredentialAlteration> scram = new ArrayList<>();
        Set<String> users = new HashSet<>();
        Set<AclBinding> acls = new HashSet<>();
        BufferedReader reader = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        int number = 0;
        while ((line = reader.readLine()) != null) {
            number++;
            line = line.strip();
            if (line.isEmpty() || line.startsWith("#")) {
                continue;
            }
            String[] f = line.split("\\s+");
            if (f[0].equals("scram") && f.length == 3) {
                users.add(f[1]);
                scram.add(new UserScramCredentialUpsertion(
                        f[1], new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), f[2]));
            } else if (f[0].equals("keep") && f.length == 2) {
                users.add(f[1]);
            } else if (f[0].equals("acl") && f.length == 6) {
                ResourcePattern pattern = new ResourcePattern(
                        ResourceType.fromString(f[2]), f[4], PatternType.fromString(f[3]));
                AccessControlEntry entry = new AccessControlEntry(
                        f[1], "*", AclOperation.fromString(f[5]), AclPermissionType.ALLOW);
                acls.add(new AclBinding(pattern, entry));
            } else {
                // The line may hold a password: name the line, not its text.
                System.err.println("line " + number + ": expected 'scram USER PASSWORD', 'keep USER' or 'acl ...'");
                System.exit(2);
            }
        }
        int removedAcls = 0;
        int removedUsers = 0;
        try (Admin admin = Admin.create(props)) {
            for (UserScramCredentialsDescription existing :
                    admin.describeUserScramCredentials().all().get(60, TimeUnit.SECONDS).values()) {
                if (!users.contains(existing.name())) {
                    for (ScramCredentialInfo info : existing.credentialInfos()) {
                        scram.add(new UserScramCredentialDeletion(existing.name(), info.mechanism()));
                    }
                    removedUsers++;
                }
            }
            if (!scram.isEmpty()) {
                admin.alterUserScramCredentials(scram).all().get(60, TimeUnit.SECONDS);
            }
            List<AclBindingFilter> stale = new ArrayList<>();
            for (AclBinding existing : admin.describeAcls(AclBindingFilter.ANY).values().get(60, TimeUnit.SECONDS)) {
                if (!acls.contains(existing)) {
                    stale.add(existing.toFilter());
                }
            }
            if (!stale.isEmpty()) {
                admin.deleteAcls(stale).all().get(60, TimeUnit.SECONDS);
                removedAcls = stale.size();
            }
            if (!acls.isEmpty()) {
                admin.createAcls(new ArrayList<>(acls)).all().get(60, TimeUnit.SECONDS);
            }
        }
        System.out.println("applied " + (users.size()) + " principal(s) and " + acls.size() + " ACL(s); removed "
                + removedUsers + " principal(s) and " + removedAcls + " ACL(s)");
    }
}
