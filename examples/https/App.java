// Calls an HTTPS API with java.net.http.HttpClient. GET /via/java/<id>. Trust comes from the truststore
// doppel passes in JAVA_TOOL_OPTIONS; APP_VARIANT=changed adds a 10% markup.
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class App {
    public static void main(String[] args) throws Exception {
        String upstream = System.getenv("UPSTREAM_URL");
        boolean changed = "changed".equals(System.getenv("APP_VARIANT"));
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", Integer.parseInt(System.getenv("APP_PORT"))), 0);
        Pattern route = Pattern.compile("^/via/java/(\\d+)$");
        server.createContext("/", exchange -> {
            String body;
            int status = 200;
            Matcher m = route.matcher(exchange.getRequestURI().getPath());
            try {
                if (exchange.getRequestURI().getPath().equals("/health")) {
                    body = "{\"status\":\"ok\"}";
                } else if (m.matches()) {
                    HttpRequest req = HttpRequest.newBuilder(URI.create(upstream + "/catalog/" + m.group(1))).build();
                    String json = client.send(req, HttpResponse.BodyHandlers.ofString()).body();
                    Matcher name = Pattern.compile("\"name\": \"([^\"]*)\"").matcher(json);
                    Matcher price = Pattern.compile("\"price\": ([0-9.]+)").matcher(json);
                    name.find();
                    price.find();
                    double p = Double.parseDouble(price.group(1)) * (changed ? 1.1 : 1.0);
                    body = String.format("{\"client\":\"java\",\"name\":\"%s\",\"price\":%.2f}", name.group(1), p);
                } else {
                    status = 404;
                    body = "{}";
                }
            } catch (Exception e) {
                status = 502;
                body = "{\"error\":\"" + e.getClass().getSimpleName() + "\"}";
            }
            byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
            exchange.getResponseHeaders().add("Content-Type", "application/json");
            exchange.sendResponseHeaders(status, bytes.length);
            exchange.getResponseBody().write(bytes);
            exchange.close();
        });
        server.start();
    }
}
